//! Helpers shared by the operators' tests.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use sluice_types::{Batch, IngestTime, timestamp_field};

use crate::operator::TimeDomain;

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

/// A batch of `(a, b, event time)` rows as two Int64 columns named `names` and
/// `_timestamp`.
pub(crate) fn int_batch(names: [&str; 2], rows: &[(i64, i64, i64)]) -> Batch {
    let schema = Arc::new(Schema::new(vec![
        Field::new(names[0], DataType::Int64, false),
        Field::new(names[1], DataType::Int64, false),
        timestamp_field(),
    ]));
    let data = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
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
    let t = ctx.timers.pop_due(TimeDomain::ProcessingTime, i64::MAX)?;
    op.on_timer(TimeDomain::ProcessingTime, t, ctx, out)
        .await
        .expect("timer");
    Some(t)
}

/// `k,window_start,window_end,<column 3>` of every output row, in emission order.
pub(crate) fn window_rows(out: &[Batch]) -> Vec<String> {
    window_rows_through(out, 4)
}

/// `k,window_start,window_end,<every aggregate>` of every output row (all columns but
/// the event time), sorted.
pub(crate) fn all_window_rows(out: &[Batch]) -> Vec<String> {
    let columns = out.first().map_or(0, |b| b.data.num_columns() - 1);
    let mut rows = window_rows_through(out, columns);
    rows.sort();
    rows
}

/// The first `columns` columns of every output row, window bounds as epoch ms.
fn window_rows_through(out: &[Batch], columns: usize) -> Vec<String> {
    use arrow::util::display::array_value_to_string;
    let mut rows = Vec::new();
    for b in out {
        let d = &b.data;
        for i in 0..d.num_rows() {
            let cell = |c: usize| match c {
                1 | 2 => d
                    .column(c)
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .expect("a window bound")
                    .value(i)
                    .to_string(),
                _ => array_value_to_string(d.column(c), i).expect("printable"),
            };
            rows.push((0..columns).map(cell).collect::<Vec<_>>().join(","));
        }
    }
    rows
}

/// Runs `batches` through one operator with a checkpoint after `split_at` batches, then
/// restores that checkpoint (through the Arrow IPC encoding) into `parallelism` fresh
/// operators, routes the remaining batches to them by the key group of column `k`, ends
/// the input, and returns every output row (`window_rows`), sorted. With the same
/// operator run without a checkpoint, the result must be the same. Rows are routed by
/// the columns `route_by`, as the hash edge into the operator would.
pub(crate) async fn run_through_checkpoint(
    make: impl Fn() -> Box<dyn crate::operator::Operator>,
    batches: &[Batch],
    split_at: usize,
    parallelism: usize,
    route_by: &[usize],
) -> Vec<String> {
    use crate::operator::{OperatorContext, VecCollector};
    use crate::state::{RestoredState, decode_table, encode_table, key_groups, owned_rows};
    use sluice_types::{CheckpointBarrier, CheckpointKind, Watermark};
    const MAX_P: usize = 128;
    let schema = batches[0].data.schema();
    let mut out = VecCollector::default();
    let mut op = make();
    let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
    // Watermarks advance as a source's would, so windows fire before the cut and the
    // snapshot holds fired windows, watermark state and timers.
    let watermarks = safe_watermarks(batches);
    for (b, wm) in batches[..split_at].iter().zip(&watermarks) {
        op.process_batch(b.clone(), &mut ctx, &mut out)
            .await
            .expect("process");
        if let Some(wm) = wm {
            advance(op.as_mut(), &mut ctx, *wm, &mut out)
                .await
                .expect("watermark");
        }
    }
    assert!(
        !out.batches.is_empty(),
        "nothing fired before the checkpoint: the cut tests no fired state"
    );
    let barrier = CheckpointBarrier {
        epoch: 1,
        triggered_at_us: 0,
        kind: CheckpointKind::Checkpoint,
        then_stop: false,
    };
    let state = op.snapshot(&barrier, &mut ctx).await.expect("snapshot");
    let tables: Vec<(String, Vec<RecordBatch>)> = state
        .keyed
        .iter()
        .map(|(name, b)| {
            let bytes = encode_table(b).expect("encode");
            (name.clone(), decode_table(&bytes).expect("decode"))
        })
        .collect();
    let mut ops = Vec::new();
    for s in 0..parallelism {
        let mut restored = RestoredState {
            metas: vec![state.meta.clone()],
            ..Default::default()
        };
        for (name, bs) in &tables {
            for b in bs {
                if let Some(r) = owned_rows(b, s, parallelism, MAX_P).expect("filter") {
                    restored.keyed.entry(name.clone()).or_default().push(r);
                }
            }
        }
        let mut op = make();
        let mut restored_ctx = OperatorContext::for_test(Arc::clone(&schema));
        // As the runtime does: every old subtask's timers, then the operator's state.
        restored_ctx.timers.merge(&ctx.timers);
        op.restore(restored, &mut restored_ctx)
            .await
            .expect("restore");
        ops.push((op, restored_ctx));
    }
    for (b, wm) in batches[split_at..].iter().zip(&watermarks[split_at..]) {
        let groups =
            key_groups(&route_columns(b, route_by), b.num_rows(), MAX_P).expect("key groups");
        let groups = groups
            .as_any()
            .downcast_ref::<arrow::array::UInt32Array>()
            .expect("u32");
        for (s, (op, ctx)) in ops.iter_mut().enumerate() {
            let mask: arrow::array::BooleanArray = groups
                .values()
                .iter()
                .map(|&g| {
                    Some(
                        crate::partition::subtask_for_key_group(g as usize, MAX_P, parallelism)
                            == s,
                    )
                })
                .collect();
            let rows = arrow::compute::filter_record_batch(&b.data, &mask).expect("filter");
            if rows.num_rows() > 0 {
                op.process_batch(b.with_data(rows), ctx, &mut out)
                    .await
                    .expect("process");
            }
            if let Some(wm) = wm {
                advance(op.as_mut(), ctx, *wm, &mut out)
                    .await
                    .expect("watermark");
            }
        }
    }
    for (op, ctx) in ops.iter_mut() {
        advance(op.as_mut(), ctx, Watermark::MAX, &mut out)
            .await
            .expect("watermark");
        op.on_close(ctx, &mut out).await.expect("close");
    }
    let mut rows = window_rows(&out.batches);
    rows.sort();
    rows
}

/// What the runtime does with a watermark: fires the operator's event-time timers that
/// it reaches, in time order, then hands the watermark to the operator.
pub(crate) async fn advance(
    op: &mut dyn crate::operator::Operator,
    ctx: &mut crate::operator::OperatorContext,
    wm: sluice_types::Watermark,
    out: &mut dyn crate::operator::Collector,
) -> sluice_types::Result<Option<sluice_types::Watermark>> {
    ctx.watermark = Some(wm);
    if let Some(t) = wm.event_time() {
        while let Some(due) = ctx.timers.pop_due(TimeDomain::EventTime, t) {
            op.on_timer(TimeDomain::EventTime, due, ctx, out).await?;
        }
    }
    op.on_watermark(wm, ctx, out).await
}

/// Runs `batches` through one operator without a checkpoint, to the end of input;
/// returns every output row (`window_rows`), sorted.
pub(crate) async fn run_plain(
    make: impl Fn() -> Box<dyn crate::operator::Operator>,
    batches: &[Batch],
) -> Vec<String> {
    use crate::operator::{OperatorContext, VecCollector};
    let mut out = VecCollector::default();
    let mut op = make();
    let mut ctx = OperatorContext::for_test(batches[0].data.schema());
    let watermarks = safe_watermarks(batches);
    for (b, wm) in batches.iter().zip(&watermarks) {
        op.process_batch(b.clone(), &mut ctx, &mut out)
            .await
            .expect("process");
        if let Some(wm) = wm {
            advance(op.as_mut(), &mut ctx, *wm, &mut out)
                .await
                .expect("watermark");
        }
    }
    advance(
        op.as_mut(),
        &mut ctx,
        sluice_types::Watermark::MAX,
        &mut out,
    )
    .await
    .expect("watermark");
    op.on_close(&mut ctx, &mut out).await.expect("close");
    let mut rows = window_rows(&out.batches);
    rows.sort();
    rows
}

/// After each batch, the watermark a source would be at: just below the earliest event
/// time of every later batch (no later row is late), `None` when it would not move.
pub(crate) fn safe_watermarks(batches: &[Batch]) -> Vec<Option<sluice_types::Watermark>> {
    let mins: Vec<i64> = batches
        .iter()
        .map(|b| {
            b.timestamps()
                .values()
                .iter()
                .copied()
                .min()
                .unwrap_or(i64::MAX)
        })
        .collect();
    let mut last = i64::MIN;
    (0..batches.len())
        .map(|i| {
            let later = mins[i + 1..].iter().copied().min()?;
            let wm = later.saturating_sub(1);
            (wm > last).then(|| {
                last = wm;
                sluice_types::Watermark::EventTime(wm)
            })
        })
        .collect()
}

fn route_columns(b: &Batch, route_by: &[usize]) -> Vec<arrow::array::ArrayRef> {
    route_by
        .iter()
        .map(|&i| Arc::clone(b.data.column(i)))
        .collect()
}

/// A checkpoint barrier for tests.
pub(crate) fn barrier() -> sluice_types::CheckpointBarrier {
    sluice_types::CheckpointBarrier {
        epoch: 1,
        triggered_at_us: 0,
        kind: sluice_types::CheckpointKind::Checkpoint,
        then_stop: false,
    }
}

/// What subtask `subtask` of `parallelism` gets back from a snapshot: its tables encoded
/// and decoded as in a checkpoint, cut to the key groups it owns (128 in all).
pub(crate) fn restored(
    state: &crate::state::OperatorState,
    subtask: usize,
    parallelism: usize,
) -> crate::state::RestoredState {
    let mut out = crate::state::RestoredState::default();
    if !state.meta.is_null() {
        out.metas.push(state.meta.clone());
    }
    for (name, batches) in &state.keyed {
        let table =
            crate::state::decode_table(&crate::state::encode_table(batches).unwrap()).unwrap();
        for b in &table {
            if let Some(r) = crate::state::owned_rows(b, subtask, parallelism, 128).unwrap() {
                out.keyed.entry(name.clone()).or_default().push(r);
            }
        }
    }
    out
}

/// The rows a changelog leaves when applied in order (`+I`/`+U` add a row, `-U`/`-D` take
/// one back), each as its user columns joined by commas, sorted. A row taken back that
/// was never added is a bug in the operator and fails the test.
pub(crate) fn materialize(out: &[Batch]) -> Vec<String> {
    use arrow::util::display::array_value_to_string;
    let mut rows: std::collections::BTreeMap<String, usize> = Default::default();
    for b in out {
        let d = &b.data;
        for i in 0..d.num_rows() {
            let cells: Vec<String> = (0..b.num_user_columns())
                .map(|c| array_value_to_string(d.column(c), i).unwrap())
                .collect();
            let row = cells.join(",");
            match b.row_kind(i).is_addition() {
                true => *rows.entry(row).or_default() += 1,
                false => {
                    let n = rows.get_mut(&row).unwrap_or_else(|| {
                        panic!(
                            "{} {row} takes back a row that is not there",
                            b.row_kind(i).short()
                        )
                    });
                    *n -= 1;
                    if *n == 0 {
                        rows.remove(&row);
                    }
                }
            }
        }
    }
    rows.into_iter()
        .flat_map(|(r, n)| std::iter::repeat_n(r, n))
        .collect()
}

/// A batch of an updating stream: two BIGINT columns named `names`, each row with its
/// kind, at event time 0.
pub(crate) fn change_batch(names: [&str; 2], rows: &[(sluice_types::RowKind, i64, i64)]) -> Batch {
    let timed: Vec<_> = rows.iter().map(|&(k, a, b)| (k, a, b, 0)).collect();
    timed_change_batch(names, &timed)
}

/// [`change_batch`] with each change's event time last.
pub(crate) fn timed_change_batch(
    names: [&str; 2],
    rows: &[(sluice_types::RowKind, i64, i64, i64)],
) -> Batch {
    use arrow::array::{Int8Array, Int64Array, RecordBatch, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let user = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new(names[0], DataType::Int64, false),
            Field::new(names[1], DataType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap();
    Batch::from_changes(
        &user,
        Int8Array::from_iter_values(rows.iter().map(|r| r.0.code())),
        TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.3)),
        sluice_types::IngestTime::at(0),
    )
    .unwrap()
}

/// The changes of `out` as `+I k,v,…` strings, in order.
pub(crate) fn changes(out: &[Batch]) -> Vec<String> {
    use arrow::util::display::array_value_to_string;
    let mut v = Vec::new();
    for b in out {
        for i in 0..b.num_rows() {
            let cells: Vec<String> = (0..b.num_user_columns())
                .map(|c| array_value_to_string(b.data.column(c), i).unwrap())
                .collect();
            v.push(format!("{} {}", b.row_kind(i).short(), cells.join(",")));
        }
    }
    v
}

/// Feeds the changelog batches `feed` (two BIGINT columns `k`, `v`) to an operator of
/// `prepared`, replacing it just before batch `restore_at` by a fresh one restored from a
/// checkpoint; returns what they emitted.
pub(crate) async fn feed_changes_through_restore(
    prepared: &crate::operators::PreparedOperator,
    feed: &[Vec<(sluice_types::RowKind, i64, i64)>],
    restore_at: usize,
) -> Vec<Batch> {
    let make = || (prepared.factory)(&sluice_types::TaskInfo::for_test("test")).unwrap();
    let mut op = make();
    let mut ctx =
        crate::operator::OperatorContext::for_test(change_batch(["k", "v"], &[]).data.schema());
    let mut out = crate::operator::VecCollector::default();
    for (i, rows) in feed.iter().enumerate() {
        if i == restore_at {
            let state = op.snapshot(&barrier(), &mut ctx).await.unwrap();
            op = make();
            op.restore(restored(&state, 0, 1), &mut ctx).await.unwrap();
        }
        op.process_batch(change_batch(["k", "v"], rows), &mut ctx, &mut out)
            .await
            .unwrap();
    }
    out.batches
}
