//! Tests of the slicing window operator.

use super::*;
use datafusion_expr::col;
use datafusion_functions_aggregate::expr_fn::{count, max, sum};
use sluice_testkit::{assert_pretty, batch_from_pretty};

use crate::operators::test_util::advance;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test]
async fn windows_survive_a_checkpoint_and_a_change_of_parallelism() {
    use crate::operators::test_util::{kv_batch, run_plain, run_through_checkpoint};
    let batches: Vec<Batch> = (0..6)
        .map(|b| {
            kv_batch(
                &(0..50)
                    .map(|i| (i % 9, i, b * 700 + i * 13))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    for window in [
        WindowSpec::Tumbling {
            size: Duration::from_secs(1),
        },
        WindowSpec::Hopping {
            size: Duration::from_secs(2),
            slide: Duration::from_millis(500),
        },
    ] {
        let make = || {
            Box::new(
                WindowAggregateOperator::new(
                    &["k".into()],
                    window,
                    &[count(col("v")).alias("n"), sum(col("v")).alias("s")],
                    Duration::ZERO,
                    &batches[0].data.schema(),
                )
                .unwrap(),
            ) as Box<dyn Operator>
        };
        let whole = run_plain(make, &batches).await;
        assert!(!whole.is_empty());
        for p in [1, 2, 3] {
            assert_eq!(
                run_through_checkpoint(make, &batches, 3, p, &[0]).await,
                whole,
                "{window}, parallelism {p}"
            );
        }
    }
}

#[tokio::test]
async fn checkpoints_with_the_earlier_slices_layout_still_restore() {
    use crate::operators::test_util::{barrier, kv_batch, restored, window_rows};
    let batches: Vec<Batch> = (0..3)
        .map(|b| {
            kv_batch(
                &(0..40)
                    .map(|i| (i % 7, i, b * 300 + i * 7))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let schema = batches[0].data.schema();
    let make = || {
        WindowAggregateOperator::new(
            &["k".into()],
            WindowSpec::Tumbling {
                size: Duration::from_millis(200),
            },
            &[count(col("v")).alias("n"), sum(col("v")).alias("s")],
            Duration::ZERO,
            &schema,
        )
        .unwrap()
    };
    let mut op = make();
    let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
    let mut out = crate::operator::VecCollector::default();
    for b in &batches {
        op.process_batch(b.clone(), &mut ctx, &mut out)
            .await
            .unwrap();
    }
    let state = op.snapshot(&barrier(), &mut ctx).await.unwrap();
    // The layout before the state tables: `_key_group`, `_slice`, keys, states.
    let mut earlier = state.clone();
    for b in earlier.keyed.get_mut(SLICES_TABLE).unwrap() {
        let mut order = vec![0, 2];
        order.push(1);
        order.extend(3..b.num_columns());
        *b = b.project(&order).unwrap();
        assert_eq!(b.schema().field(1).name(), SLICE_COLUMN);
    }
    let mut results = Vec::new();
    for s in [&state, &earlier] {
        let mut op = make();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        op.restore(restored(s, 0, 1), &mut ctx).await.unwrap();
        let mut out = crate::operator::VecCollector::default();
        advance(&mut op, &mut ctx, Watermark::EventTime(i64::MAX), &mut out)
            .await
            .unwrap();
        results.push(window_rows(&out.batches));
    }
    assert!(!results[0].is_empty());
    assert_eq!(results[0], results[1]);
}

async fn run(window: WindowSpec, lateness: Duration, steps: Vec<Step>) -> (Vec<Batch>, u64) {
    let (out, late, _) = run_counting(window, lateness, steps).await;
    (out, late)
}

async fn run_counting(
    window: WindowSpec,
    lateness: Duration,
    steps: Vec<Step>,
) -> (Vec<Batch>, u64, u64) {
    let first = match &steps[0] {
        Step::Rows(b) => b.clone(),
        Step::Wm(_) => panic!("start with rows"),
    };
    let schema = first.data.schema();
    let p = WindowAggregateOperator::prepare(
        &["k".into()],
        window,
        &[
            count(col("v")).alias("n"),
            sum(col("v")).alias("total"),
            max(col("v")).alias("hi"),
        ],
        lateness,
        &schema,
    )
    .unwrap();
    let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("window")).unwrap();
    let mut ctx = OperatorContext::for_test(schema);
    let mut out = crate::operator::VecCollector::default();
    for s in steps {
        match s {
            Step::Rows(b) => op.process_batch(b, &mut ctx, &mut out).await.unwrap(),
            Step::Wm(t) => {
                advance(op.as_mut(), &mut ctx, Watermark::EventTime(t), &mut out)
                    .await
                    .unwrap();
            }
        }
    }
    let late = ctx
        .metrics
        .late_records
        .load(std::sync::atomic::Ordering::Relaxed);
    let dead = ctx
        .metrics
        .dead_letters
        .load(std::sync::atomic::Ordering::Relaxed);
    (out.batches, late, dead)
}

enum Step {
    Rows(Batch),
    Wm(i64),
}

#[tokio::test]
async fn tumbling_windows_fire_on_watermark_with_out_of_order_rows() {
    let (out, late) = run(
        WindowSpec::Tumbling { size: secs(10) },
        Duration::ZERO,
        vec![
            Step::Rows(batch_from_pretty(
                "
                | k:Utf8 | v:Int64 | _timestamp:Ts |
                | a      | 1       | 1000          |
                | b      | 2       | 12000         |
                | a      | 3       | 9999          |",
            )),
            Step::Wm(9_000),
            Step::Rows(batch_from_pretty(
                "
                | k:Utf8 | v:Int64 | _timestamp:Ts |
                | a      | 4       | 9500          |
                | a      | 5       | 15000         |",
            )),
            Step::Wm(9_999),
            Step::Rows(batch_from_pretty(
                "
                | k:Utf8 | v:Int64 | _timestamp:Ts |
                | a      | 100     | 9000          |",
            )),
            Step::Wm(i64::MAX),
        ],
    )
    .await;
    assert_pretty(
        &out,
        "
        +---+---------------------+---------------------+---+-------+----+-------------------------+
        | k | window_start        | window_end          | n | total | hi | _timestamp              |
        +---+---------------------+---------------------+---+-------+----+-------------------------+
        | a | 1970-01-01T00:00:00 | 1970-01-01T00:00:10 | 3 | 8     | 4  | 1970-01-01T00:00:09.999 |
        | b | 1970-01-01T00:00:10 | 1970-01-01T00:00:20 | 1 | 2     | 2  | 1970-01-01T00:00:19.999 |
        | a | 1970-01-01T00:00:10 | 1970-01-01T00:00:20 | 1 | 5     | 5  | 1970-01-01T00:00:19.999 |
        +---+---------------------+---------------------+---+-------+----+-------------------------+",
    );
    assert_eq!(late, 1, "the row at 9 000 arrived after its window closed");
}

#[tokio::test]
async fn hopping_windows_merge_slices() {
    let (out, _) = run(
        WindowSpec::Hopping {
            size: secs(4),
            slide: secs(2),
        },
        Duration::ZERO,
        vec![
            Step::Rows(batch_from_pretty(
                "
                | k:Utf8 | v:Int64 | _timestamp:Ts |
                | a      | 1       | 500           |
                | a      | 2       | 2500          |
                | a      | 3       | 4500          |",
            )),
            Step::Wm(i64::MAX),
        ],
    )
    .await;
    assert_pretty(
        &out,
        "
        +---+---------------------+---------------------+---+-------+----+-------------------------+
        | k | window_start        | window_end          | n | total | hi | _timestamp              |
        +---+---------------------+---------------------+---+-------+----+-------------------------+
        | a | 1969-12-31T23:59:58 | 1970-01-01T00:00:02 | 1 | 1     | 1  | 1970-01-01T00:00:01.999 |
        | a | 1970-01-01T00:00:00 | 1970-01-01T00:00:04 | 2 | 3     | 2  | 1970-01-01T00:00:03.999 |
        | a | 1970-01-01T00:00:02 | 1970-01-01T00:00:06 | 2 | 5     | 3  | 1970-01-01T00:00:05.999 |
        | a | 1970-01-01T00:00:04 | 1970-01-01T00:00:08 | 1 | 3     | 3  | 1970-01-01T00:00:07.999 |
        +---+---------------------+---------------------+---+-------+----+-------------------------+",
    );
}

#[tokio::test]
async fn allowed_lateness_refires_then_late_rows_are_counted() {
    let (out, late) = run(
        WindowSpec::Tumbling { size: secs(10) },
        secs(5),
        vec![
            Step::Rows(batch_from_pretty(
                "
                | k:Utf8 | v:Int64 | _timestamp:Ts |
                | a      | 1       | 1000          |",
            )),
            Step::Wm(10_000),
            Step::Rows(batch_from_pretty(
                "
                | k:Utf8 | v:Int64 | _timestamp:Ts |
                | a      | 2       | 2000          |",
            )),
            Step::Wm(15_000),
            Step::Rows(batch_from_pretty(
                "
                | k:Utf8 | v:Int64 | _timestamp:Ts |
                | a      | 3       | 3000          |",
            )),
        ],
    )
    .await;
    assert_pretty(
        &out,
        "
        +---+---------------------+---------------------+---+-------+----+-------------------------+
        | k | window_start        | window_end          | n | total | hi | _timestamp              |
        +---+---------------------+---------------------+---+-------+----+-------------------------+
        | a | 1970-01-01T00:00:00 | 1970-01-01T00:00:10 | 1 | 1     | 1  | 1970-01-01T00:00:09.999 |
        | a | 1970-01-01T00:00:00 | 1970-01-01T00:00:10 | 2 | 3     | 2  | 1970-01-01T00:00:09.999 |
        +---+---------------------+---------------------+---+-------+----+-------------------------+",
    );
    assert_eq!(late, 1, "beyond the allowed lateness the row is late");
}

#[tokio::test]
async fn extreme_event_times_neither_panic_nor_hang() {
    let (out, late, dead) = run_counting(
        WindowSpec::Hopping {
            size: secs(4),
            slide: secs(2),
        },
        Duration::ZERO,
        vec![
            Step::Rows(batch_from_pretty(&format!(
                "
                | k:Utf8 | v:Int64 | _timestamp:Ts |
                | a      | 1       | {}            |
                | b      | 2       | {}            |
                | c      | 3       | 1000          |",
                i64::MIN + 5,
                i64::MAX - 5
            ))),
            Step::Wm(i64::MAX),
        ],
    )
    .await;
    let rows: usize = out.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 2, "the in-range row is in its two windows");
    assert_eq!(
        (late, dead),
        (0, 2),
        "out-of-range rows go to the dead-letter output"
    );
}

/// A user-defined aggregate: the product of the values.
#[derive(Debug)]
struct Product(i64);

impl datafusion_expr::Accumulator for Product {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion_common::Result<()> {
        let v = values[0]
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        self.0 = v.iter().flatten().fold(self.0, |a, b| a * b);
        Ok(())
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion_common::Result<()> {
        self.update_batch(states)
    }
    fn state(&mut self) -> datafusion_common::Result<Vec<datafusion_common::ScalarValue>> {
        Ok(vec![datafusion_common::ScalarValue::Int64(Some(self.0))])
    }
    fn evaluate(&mut self) -> datafusion_common::Result<datafusion_common::ScalarValue> {
        Ok(datafusion_common::ScalarValue::Int64(Some(self.0)))
    }
    fn size(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

#[tokio::test]
async fn distinct_first_last_and_user_aggregates() {
    use datafusion_functions_aggregate::expr_fn::{count_distinct, first_value, last_value};
    let product = datafusion_expr::create_udaf(
        "product",
        vec![DataType::Int64],
        Arc::new(DataType::Int64),
        datafusion_expr::Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(Product(1)))),
        Arc::new(vec![DataType::Int64]),
    );
    let input = batch_from_pretty(
        "
        | k:Utf8 | v:Int64 | _timestamp:Ts |
        | a      | 3       | 300           |
        | a      | 2       | 100           |
        | a      | 3       | 900           |
        | a      | 5       | 500           |",
    );
    let by_time = || vec![col("_timestamp").sort(true, false)];
    let p = WindowAggregateOperator::prepare(
        &["k".into()],
        WindowSpec::Tumbling { size: secs(1) },
        &[
            count_distinct(col("v")).alias("distinct"),
            first_value(col("v"), by_time()).alias("first"),
            last_value(col("v"), by_time()).alias("last"),
            product.call(vec![col("v")]).alias("product"),
        ],
        Duration::ZERO,
        &input.data.schema(),
    )
    .unwrap();
    let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("window")).unwrap();
    let mut ctx = OperatorContext::for_test(input.data.schema());
    let mut out = crate::operator::VecCollector::default();
    op.process_batch(input, &mut ctx, &mut out).await.unwrap();
    advance(op.as_mut(), &mut ctx, Watermark::MAX, &mut out)
        .await
        .unwrap();
    assert_pretty(
        &out.batches,
        "
        +---+---------------------+---------------------+----------+-------+------+---------+-------------------------+
        | k | window_start        | window_end          | distinct | first | last | product | _timestamp              |
        +---+---------------------+---------------------+----------+-------+------+---------+-------------------------+
        | a | 1970-01-01T00:00:00 | 1970-01-01T00:00:01 | 3        | 2     | 3    | 90      | 1970-01-01T00:00:00.999 |
        +---+---------------------+---------------------+----------+-------+------+---------+-------------------------+",
    );
}

#[tokio::test]
async fn early_firings_emit_partial_results_before_the_final_one() {
    let rows = |v: i64, t: i64| {
        batch_from_pretty(&format!(
            "
            | k:Utf8 | v:Int64 | _timestamp:Ts |
            | a      | {v}     | {t}           |"
        ))
    };
    let schema = rows(1, 1).data.schema();
    let mut op = WindowAggregateOperator::new(
        &["k".into()],
        WindowSpec::Tumbling { size: secs(10) },
        &[sum(col("v")).alias("total")],
        Duration::ZERO,
        &schema,
    )
    .unwrap()
    .with_early_firing(Some(Duration::from_millis(100)));
    let mut ctx = OperatorContext::for_test(schema);
    let mut out = crate::operator::VecCollector::default();
    op.process_batch(rows(1, 1_000), &mut ctx, &mut out)
        .await
        .unwrap();
    let t = ctx
        .timers
        .next(TimeDomain::ProcessingTime)
        .expect("an early-firing timer");
    ctx.timers.pop_due(TimeDomain::ProcessingTime, t);
    op.on_timer(TimeDomain::ProcessingTime, t, &mut ctx, &mut out)
        .await
        .unwrap();
    op.process_batch(rows(2, 2_000), &mut ctx, &mut out)
        .await
        .unwrap();
    let t2 = ctx
        .timers
        .next(TimeDomain::ProcessingTime)
        .expect("re-armed while windows are open");
    assert_eq!(t2, t + 100);
    ctx.timers.pop_due(TimeDomain::ProcessingTime, t2);
    op.on_timer(TimeDomain::ProcessingTime, t2, &mut ctx, &mut out)
        .await
        .unwrap();
    advance(&mut op, &mut ctx, Watermark::MAX, &mut out)
        .await
        .unwrap();
    let totals: Vec<String> = out
        .batches
        .iter()
        .map(|b| arrow::util::display::array_value_to_string(b.data.column(3), 0).unwrap())
        .collect();
    assert_eq!(totals, ["1", "3", "3"], "partial, partial, final");
    op.on_timer(TimeDomain::ProcessingTime, t2 + 100, &mut ctx, &mut out)
        .await
        .unwrap();
    assert_eq!(out.batches.len(), 3, "nothing open: no more early results");
}

#[test]
fn invalid_windows_are_rejected() {
    let b = batch_from_pretty(
        "
        | k:Utf8 | _timestamp:Ts |
        | a      | 1             |",
    );
    let e = WindowAggregateOperator::prepare(
        &["k".into()],
        WindowSpec::Hopping {
            size: secs(2),
            slide: secs(4),
        },
        &[],
        Duration::ZERO,
        &b.data.schema(),
    )
    .err()
    .unwrap();
    assert!(
        e.to_string().contains("slide is longer than the size"),
        "{e}"
    );
}

mod property {
    use super::*;
    use proptest::prelude::*;

    const BOUND: i64 = 100;

    /// From scratch: every window [s, s + size) with s on the slide grid holding t, for
    /// rows that arrived at watermarks: a row counts in a window only if the window had
    /// not fired when it arrived.
    fn reference_at(rows: &[(i64, i64, i64, i64)], size: i64, slide: i64) -> Vec<String> {
        let mut acc: BTreeMap<(i64, i64), (i64, i64, i64)> = BTreeMap::new();
        for &(k, v, t, wm) in rows {
            let mut s = t.div_euclid(slide) * slide;
            while s > t - size {
                if s + size - 1 > wm {
                    let e = acc.entry((k, s)).or_insert((0, 0, i64::MIN));
                    *e = (e.0 + 1, e.1 + v, e.2.max(v));
                }
                s -= slide;
            }
        }
        let mut out: Vec<String> = acc
            .into_iter()
            .map(|((k, s), (n, total, hi))| format!("k{k},{s},{},{n},{total},{hi}", s + size))
            .collect();
        out.sort();
        out
    }

    use crate::operators::test_util::kv_batch as batch;

    fn geometry() -> impl Strategy<Value = (i64, i64)> {
        prop_oneof![
            (1..=5i64).prop_map(|k| (100 * k, 100 * k)), // tumbling
            (1..=3i64, 1..=4i64).prop_map(|(s, k)| (100 * s * k, 100 * s)), // hopping, size = k * slide
            Just((300i64, 200i64)), // slide does not divide size
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn windows_equal_a_batch_computation(
            (size, slide) in geometry(),
            events in prop::collection::vec((0..4i64, -50..50i64, 0..40i64, 0..=BOUND), 1..300),
            cuts in prop::collection::vec(1..40usize, 1..20),
            lag in 0..=BOUND,
            restore_at in 0..12usize,
        ) {
            // Rows out of order by at most BOUND: t = base - jitter, base non-decreasing.
            // The watermark trails the largest time by `lag`: when that is less than the
            // jitter, some rows come after windows of theirs fired (late for those windows,
            // or for all of them: then to the late output).
            let mut base = 0;
            let rows: Vec<(i64, i64, i64)> = events
                .iter()
                .map(|&(k, v, step, jitter)| {
                    base += step;
                    (k, v, base - jitter)
                })
                .collect();
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let keys = ["k".to_string()];
            let aggs = [count(col("v")).alias("n"), sum(col("v")).alias("total"), max(col("v")).alias("hi")];
            let schema = batch(&rows[..1]).data.schema();
            let window = if size == slide {
                WindowSpec::Tumbling { size: Duration::from_millis(size as u64) }
            } else {
                WindowSpec::Hopping { size: Duration::from_millis(size as u64), slide: Duration::from_millis(slide as u64) }
            };
            let make = || WindowAggregateOperator::new(&keys, window, &aggs, Duration::ZERO, &schema).unwrap();
            let mut op = make();
            let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
            let mut out = crate::operator::VecCollector::default();
            let mut max_slices = 0;
            // Each row with the watermark it arrived at.
            let mut arrived: Vec<(i64, i64, i64, i64)> = Vec::new();
            rt.block_on(async {
                let mut at = 0;
                let mut max_t = i64::MIN;
                let mut wm = i64::MIN;
                for (i, c) in cuts.iter().cycle().enumerate() {
                    if at >= rows.len() { break; }
                    if i == restore_at {
                        // A checkpoint here, restored into a fresh operator (timers stay
                        // with the context, as the runtime hands them back).
                        let state = op.snapshot(&crate::operators::test_util::barrier(), &mut ctx).await.unwrap();
                        op = make();
                        op.restore(crate::operators::test_util::restored(&state, 0, 1), &mut ctx).await.unwrap();
                    }
                    let end = (at + c).min(rows.len());
                    let chunk = &rows[at..end];
                    at = end;
                    arrived.extend(chunk.iter().map(|&(k, v, t)| (k, v, t, wm)));
                    op.process_batch(batch(chunk), &mut ctx, &mut out).await.unwrap();
                    max_t = max_t.max(chunk.iter().map(|r| r.2).max().unwrap());
                    wm = wm.max(max_t - lag - 1);
                    advance(&mut op, &mut ctx, Watermark::EventTime(wm), &mut out).await.unwrap();
                    max_slices = max_slices.max(op.slices_held());
                }
                advance(&mut op, &mut ctx, Watermark::MAX, &mut out).await.unwrap();
            });
            // A row counts in each of its windows that had not fired when it arrived
            // (window [s, e) fires at watermark e - 1); one in none of them is late.
            let last_end = |t: i64| t.div_euclid(slide) * slide + size;
            let mut late: Vec<(i64, i64, i64)> = Vec::new();
            let mut counted: Vec<(i64, i64, i64, i64)> = Vec::new();
            for &(k, v, t, wm) in &arrived {
                if last_end(t) - 1 <= wm {
                    late.push((k, v, t));
                } else {
                    counted.push((k, v, t, wm));
                }
            }
            prop_assert_eq!(
                ctx.metrics.late_records.load(std::sync::atomic::Ordering::Relaxed) as usize,
                late.len()
            );
            let mut late_out: Vec<String> = out
                .side
                .iter()
                .filter(|(tag, _)| tag == "late")
                .flat_map(|(_, b)| {
                    use arrow::util::display::array_value_to_string;
                    let ts = b.timestamps().clone();
                    (0..b.num_rows())
                        .map(|r| {
                            format!(
                                "{},{},{}",
                                array_value_to_string(b.data.column(0), r).unwrap(),
                                array_value_to_string(b.data.column(1), r).unwrap(),
                                ts.value(r)
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            late_out.sort();
            let mut late: Vec<String> = late.iter().map(|(k, v, t)| format!("k{k},{v},{t}")).collect();
            late.sort();
            prop_assert_eq!(late_out, late, "the late output holds exactly the late rows");
            prop_assert_eq!(crate::operators::test_util::all_window_rows(&out.batches), reference_at(&counted, size, slide));
            prop_assert_eq!(op.slices_held(), 0, "all window state is freed at the end");
            // Live slices cover at most the open windows plus the out-of-order bound.
            let width = gcd(size, slide);
            let bound = ((size + BOUND + 40 * 40) / width + 2) as usize;
            prop_assert!(max_slices <= bound, "{} slices held, bound {}", max_slices, bound);
        }

        #[test]
        fn cumulate_windows_equal_a_batch_computation(
            (steps, step) in (1..=4i64, 1..=3i64).prop_map(|(k, s)| (k, 100 * s)),
            events in prop::collection::vec((0..4i64, -50..50i64, 0..40i64, 0..=BOUND), 1..300),
            cuts in prop::collection::vec(1..40usize, 1..20),
        ) {
            let size = steps * step;
            let mut base = 0;
            let rows: Vec<(i64, i64, i64)> = events
                .iter()
                .map(|&(k, v, d, jitter)| {
                    base += d;
                    (k, v, base - jitter)
                })
                .collect();
            // From scratch: a row at t is in its period's windows that end after t.
            let mut acc: BTreeMap<(i64, i64, i64), (i64, i64, i64)> = BTreeMap::new();
            for &(k, v, t) in &rows {
                let start = t.div_euclid(size) * size;
                let mut end = start + step;
                while end <= start + size {
                    if end > t {
                        let e = acc.entry((k, start, end)).or_insert((0, 0, i64::MIN));
                        *e = (e.0 + 1, e.1 + v, e.2.max(v));
                    }
                    end += step;
                }
            }
            let mut want: Vec<String> = acc
                .into_iter()
                .map(|((k, s, e), (n, total, hi))| format!("k{k},{s},{e},{n},{total},{hi}"))
                .collect();
            want.sort();
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let keys = ["k".to_string()];
            let aggs = [count(col("v")).alias("n"), sum(col("v")).alias("total"), max(col("v")).alias("hi")];
            let schema = batch(&rows[..1]).data.schema();
            let window = WindowSpec::Cumulate {
                size: Duration::from_millis(size as u64),
                step: Duration::from_millis(step as u64),
            };
            let mut op = WindowAggregateOperator::new(&keys, window, &aggs, Duration::ZERO, &schema).unwrap();
            let mut ctx = OperatorContext::for_test(schema);
            let mut out = crate::operator::VecCollector::default();
            rt.block_on(async {
                let mut at = 0;
                let mut max_t = i64::MIN;
                for c in cuts.iter().cycle() {
                    if at >= rows.len() { break; }
                    let end = (at + c).min(rows.len());
                    let chunk = &rows[at..end];
                    at = end;
                    op.process_batch(batch(chunk), &mut ctx, &mut out).await.unwrap();
                    max_t = max_t.max(chunk.iter().map(|r| r.2).max().unwrap());
                    advance(&mut op, &mut ctx, Watermark::EventTime(max_t - BOUND - 1), &mut out).await.unwrap();
                }
                advance(&mut op, &mut ctx, Watermark::MAX, &mut out).await.unwrap();
            });
            prop_assert_eq!(crate::operators::test_util::all_window_rows(&out.batches), want);
            prop_assert_eq!(op.slices_held(), 0, "all window state is freed at the end");
        }
    }
}
