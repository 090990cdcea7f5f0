//! Runtime behaviour end to end: chaining, backpressure, end of input, partitioning,
//! parallelism, linger, graceful stop, start-up errors, the CLI.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use sluice::prelude::*;
use sluice_types::Watermark;

use crate::support::*;

fn pipeline(name: &str, parallelism: usize) -> (Pipeline, Collected) {
    let (registry, collected) = registry_with_collect();
    let p = Pipeline::new(name);
    p.registry(registry).parallelism(parallelism);
    (p, collected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_operators_on_forward_edges_are_chained() {
    let (p, _) = pipeline("chain", 2);
    p.source(NexmarkSource::bids().events(100))
        .filter(col("price").gt(lit(10)))
        .select([col("auction"), col("price")])
        .sink(collect());
    let job = p.prepare().unwrap();
    assert_eq!(
        job.chains(),
        &[vec![0, 1, 2, 3]],
        "one task: source, filter, select, sink"
    );

    let (p, _) = pipeline("chain-keyed", 2);
    p.source(NexmarkSource::bids().events(100))
        .filter(col("price").gt(lit(10)))
        .key_by(["auction"])
        .aggregate([count_star()])
        .sink(collect());
    let job = p.prepare().unwrap();
    assert_eq!(
        job.chains(),
        &[vec![0, 1], vec![2, 3]],
        "a hash edge breaks the chain"
    );
    let explain = job.explain();
    assert!(
        explain.contains("edge [1] -> [2] HASH(auction)"),
        "{explain}"
    );
    assert!(
        explain.contains("edge [0] -> [1] FORWARD (chained)"),
        "{explain}"
    );

    // A parallelism change breaks the chain too, and turns forward into rebalance.
    let (p, _) = pipeline("chain-rescale", 2);
    p.source(NexmarkSource::bids().events(100))
        .filter(col("price").gt(lit(10)))
        .parallelism(1)
        .sink(collect());
    let job = p.prepare().unwrap();
    // source (2) | filter (1) | sink (default 2): three tasks, two rebalancing edges.
    assert_eq!(job.chains(), &[vec![0], vec![1], vec![2]]);
    assert_eq!(job.explain().matches("REBALANCE").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_slows_the_source_and_bounds_memory() {
    let (registry, collected) = registry_with_collect();
    let p = Pipeline::new("backpressure");
    let max_rows = 512;
    let capacity = 2;
    p.registry(registry)
        .batching(max_rows, Duration::from_millis(5))
        .channel_capacity(capacity);
    p.source(NexmarkSource::bids()) // unbounded
        .rebalance()
        .sink(slow_collect(2));
    let handle = p.start().await.unwrap();
    let metrics = handle.metrics();
    let stop = handle.stop_handle();
    let waiter = tokio::spawn(handle.wait());
    // In flight between source and sink at most: the channel, the batch the sink holds,
    // the batch the source is blocked sending, the batch it is building.
    let bound = ((capacity + 3) * max_rows) as u64;
    let mut max_in_flight = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let produced = metrics.operators[0].sum(|s| &s.records_out);
        let consumed = collected.rows() as u64;
        max_in_flight = max_in_flight.max(produced.saturating_sub(consumed));
    }
    stop.stop().await;
    waiter.await.unwrap().unwrap();
    assert!(
        max_in_flight <= bound,
        "in flight {max_in_flight} > bound {bound}"
    );
    let blocked = metrics.operators[0].subtasks[0]
        .backpressured_ns
        .load(Relaxed);
    assert!(blocked > 0, "the source never waited on the full channel");
    // Everything the source produced arrived (graceful stop drains).
    assert_eq!(metrics.source_records(), collected.rows() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_input_ends_with_max_watermark_then_flush() {
    let (p, collected) = pipeline("eod", 2);
    p.source(NexmarkSource::bids().events(5_000))
        .key_by(["auction"])
        .aggregate([count_star().alias("n")])
        .sink(collect());
    p.run().await.unwrap();
    for subtask in 0..2 {
        let events = collected.events_of(subtask);
        let n = events.len();
        assert!(n >= 2, "subtask {subtask} saw {events:?}");
        assert!(matches!(events[n - 1], Seen::Close), "close comes last");
        assert!(
            matches!(events[n - 2], Seen::Watermark(w) if w == Watermark::MAX),
            "the final watermark (+inf) comes right before close: {:?}",
            &events[n - 2]
        );
        // Watermarks never go backwards.
        let wms: Vec<i64> = events
            .iter()
            .filter_map(|e| match e {
                Seen::Watermark(Watermark::EventTime(t)) => Some(*t),
                _ => None,
            })
            .collect();
        assert!(wms.windows(2).all(|w| w[0] <= w[1]), "{wms:?}");
    }
    // Running counts: the largest count per auction sums to the bids generated.
    let mut finals = std::collections::HashMap::new();
    for b in collected.batches().into_iter().map(without_op) {
        let a = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        let n = b
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        for i in 0..b.num_rows() {
            let e = finals.entry(a.value(i)).or_insert(0);
            *e = n.value(i).max(*e);
        }
    }
    assert_eq!(finals.values().sum::<i64>(), 5_000 / 50 * 46);
}

async fn q2_rows(parallelism: usize) -> Vec<String> {
    let (p, collected) = pipeline("q2", parallelism);
    p.source(NexmarkSource::bids().events(200_000).seed(3))
        .filter((col("auction") % lit(123)).eq(lit(0)))
        .select([col("auction"), col("bidder"), col("price")])
        .sink(collect());
    p.run().await.unwrap();
    canonical(&collected.batches())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_the_same_at_every_parallelism() {
    let one = q2_rows(1).await;
    assert!(!one.is_empty());
    assert_eq!(one, q2_rows(2).await);
    assert_eq!(one, q2_rows(3).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_aggregate_is_independent_of_parallelism() {
    async fn run(p_src: usize, p_agg: usize) -> Vec<String> {
        let (registry, collected) = registry_with_collect();
        let p = Pipeline::new("agg");
        p.registry(registry).parallelism(p_src);
        let keyed = p
            .source(NexmarkSource::bids().events(50_000))
            .key_by(["bidder"]);
        p.parallelism(p_agg);
        keyed
            .aggregate([count_star().alias("n"), sum(col("price")).alias("total")])
            .sink(collect());
        p.run().await.unwrap();
        // Keep the final row per key (the one with the largest count).
        let mut last = std::collections::BTreeMap::new();
        for b in collected.batches().into_iter().map(without_op) {
            let k = b
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            let n = b
                .column(1)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            let t = b
                .column(2)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            for i in 0..b.num_rows() {
                let e = last.entry(k.value(i)).or_insert((0, 0));
                if n.value(i) > e.0 {
                    *e = (n.value(i), t.value(i));
                }
            }
        }
        last.into_iter()
            .map(|(k, (n, t))| format!("{k},{n},{t}"))
            .collect()
    }
    let base = run(1, 1).await;
    assert_eq!(base, run(2, 2).await);
    assert_eq!(base, run(1, 3).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_load_gives_small_batches_closed_by_linger() {
    let (registry, collected) = registry_with_collect();
    let p = Pipeline::new("linger");
    p.registry(registry)
        .batching(4096, Duration::from_millis(5));
    p.source(NexmarkSource::bids().events(500).rate_limit(2_000.0))
        .sink(collect());
    let handle = p.start().await.unwrap();
    let metrics = handle.metrics();
    handle.wait().await.unwrap();
    let batches = collected.batches();
    assert_eq!(collected.rows(), 460);
    assert!(
        batches.len() > 1,
        "linger must close batches before max_rows under light load"
    );
    assert!(batches.iter().all(|b| b.num_rows() < 4096));
    assert_eq!(
        metrics.sink_latency().count,
        460,
        "every row's end-to-end latency is recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_drains_an_unbounded_job() {
    let (p, collected) = pipeline("stop", 2);
    p.source(NexmarkSource::bids().rate_limit(50_000.0))
        .key_by(["auction"])
        .aggregate([count_star()])
        .sink(collect());
    let handle = p.start().await.unwrap();
    let stop = handle.stop_handle();
    let metrics = handle.metrics();
    let waiter = tokio::spawn(handle.wait());
    while metrics.sink_records() < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.stop().await;
    waiter.await.unwrap().unwrap();
    for s in 0..2 {
        assert!(matches!(collected.events_of(s).last(), Some(Seen::Close)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_fails_at_start_up_with_a_clear_message() {
    let err = |p: Pipeline| p.prepare().err().expect("must fail").to_string();

    let p = Pipeline::new("typo");
    p.source(
        NexmarkSource::bids()
            .into_spec()
            .with_option("evnts.num", "10"),
    )
    .sink(BlackholeSink::new());
    let e = err(p);
    assert!(
        e.contains("connector `nexmark` has no option `evnts.num`"),
        "{e}"
    );
    assert!(e.contains("events.num"), "lists the known options: {e}");

    let p = Pipeline::new("unknown");
    p.source(sluice::plan::ConnectorSpec::new("kafak"))
        .sink(BlackholeSink::new());
    let e = err(p);
    assert!(e.contains("unknown source connector `kafak`"), "{e}");

    let p = Pipeline::new("column");
    p.source(NexmarkSource::bids())
        .filter(col("prize").gt(lit(1)))
        .sink(BlackholeSink::new());
    let e = err(p);
    assert!(e.contains("prize") && e.contains("filter"), "{e}");

    let p = Pipeline::new("value");
    p.source(
        NexmarkSource::bids()
            .into_spec()
            .with_option("events.num", "many"),
    )
    .sink(BlackholeSink::new());
    let e = err(p);
    assert!(
        e.contains("option `events.num` of connector `nexmark` is `many`"),
        "{e}"
    );

    let p = Pipeline::new("event-time");
    p.source(NexmarkSource::bids())
        .event_time("channel")
        .sink(BlackholeSink::new());
    let e = err(p);
    assert!(
        e.contains("event-time column `channel` has type Utf8"),
        "{e}"
    );

    let p = Pipeline::new("no-sink");
    p.source(NexmarkSource::bids())
        .filter(col("price").gt(lit(1)));
    let e = err(p);
    assert!(e.contains("end every stream in a sink"), "{e}");

    let p = Pipeline::new("event-time-on-non-source");
    p.source(NexmarkSource::bids())
        .filter(col("price").gt(lit(1)))
        .event_time("date_time")
        .sink(BlackholeSink::new());
    let e = err(p);
    assert!(e.contains("right after `source(…)`"), "{e}");
}

#[test]
fn the_cli_runs_a_bounded_job_and_exits_zero() {
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "run",
            "--example",
            "bids-per-auction",
            "--events",
            "20000",
            "--quiet",
            "--out",
        ])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(out.path().join("bids-per-auction/part-0.jsonl")).unwrap();
    assert!(text.lines().count() > 10);
    assert!(text.contains("\"bids\":"));

    // A script's job takes no example flags: each is refused with what to do instead.
    let script = out.path().join("job.sql");
    std::fs::write(
        &script,
        "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '10');
         CREATE TABLE sink (auction BIGINT) WITH ('connector' = 'blackhole');
         INSERT INTO sink SELECT auction FROM bid;",
    )
    .unwrap();
    for (flag, value, says) in [
        ("--events", "5", "'events.num'"),
        ("--rows-per-second", "5", "'rows-per-second'"),
        ("--out", "x", "'path'"),
        ("--input", "x", "'path'"),
        ("--example", "q0", "instead of a script"),
    ] {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("run")
            .arg(&script)
            .args([flag, value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && err.contains(says), "{flag}: {err}");
    }
    // Several files plan as one session: the tables of one serve the next.
    let tables = out.path().join("tables.sql");
    std::fs::write(
        &tables,
        "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '100');",
    )
    .unwrap();
    let query = out.path().join("query.sql");
    std::fs::write(
        &query,
        "CREATE TABLE sink (auction BIGINT) WITH ('connector' = 'blackhole');
         INSERT INTO sink SELECT auction FROM bid;",
    )
    .unwrap();
    let alone = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(&query)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&alone.stderr);
    assert!(
        !alone.status.success() && err.contains("tables.sql declares tables; run it first"),
        "{err}"
    );
    let both = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--quiet"])
        .arg(&tables)
        .arg(&query)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&both.stderr);
    assert!(both.status.success(), "{err}");
    assert!(err.contains("done: 92 rows in, 92 rows out"), "{err}");

    let bench = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "bench",
            "nexmark",
            "--query",
            "q1",
            "--events",
            "50000",
            "--parallelism",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(bench.status.success());
    let v: serde_json::Value = serde_json::from_slice(&bench.stdout).unwrap();
    for key in [
        "query",
        "events",
        "parallelism",
        "wall_s",
        "cpu_s",
        "events_per_sec",
        "events_per_cpu_sec",
        "latency_p50_ms",
        "latency_p99_ms",
        "peak_rss_mb",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["events"], 50_000);
    assert_eq!(v["sink_rows"], 46_000);
    assert!(v["rate"].is_null(), "not paced: {v}");

    // Paced in wall-clock time (event time following), for latency under load.
    let paced = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "bench", "nexmark", "--query", "q1", "--events", "20000", "--rate", "100000", "--json",
        ])
        .output()
        .unwrap();
    assert!(
        paced.status.success(),
        "{}",
        String::from_utf8_lossy(&paced.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&paced.stdout).unwrap();
    assert_eq!(v["rate"], 100_000.0);
    assert_eq!(v["sink_rows"], 18_400);
    let zero = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", "nexmark", "--rate", "0"])
        .output()
        .unwrap();
    assert!(!zero.status.success());
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--rate must be a positive number"));

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--example", "nope"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown example `nope`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_source_subtask_does_not_stall_windows() {
    use arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    let rows = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1, 1, 2])),
            Arc::new(TimestampMillisecondArray::from(vec![100, 900, 5_000])),
        ],
    )
    .unwrap();
    let run = |idle: bool| {
        let rows = rows.clone();
        async move {
            let (mut registry, collected) = registry_with_collect();
            registry.register_source(StallingConnector { rows });
            let p = Pipeline::new("idle");
            p.registry(registry).parallelism(2);
            let mut src = p
                .source(sluice::plan::ConnectorSpec::new("stalling"))
                .event_time("ts");
            if idle {
                src = src.idle_timeout(Duration::from_millis(50));
            }
            src.key_by(["k"])
                .window(Window::tumbling(Duration::from_secs(1)))
                .aggregate([count_star().alias("n")])
                .sink(collect());
            let handle = p.start().await.unwrap();
            let stop = handle.stop_handle();
            let waiter = tokio::spawn(handle.wait());
            // Give the job ample time; with idleness the [0, 1 s) window fires meanwhile.
            let mut rows_while_running = 0;
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                rows_while_running = collected.rows();
                if rows_while_running > 0 {
                    break;
                }
            }
            stop.stop().await;
            waiter.await.unwrap().unwrap();
            (rows_while_running, collected.rows())
        }
    };
    let (while_running, total) = run(true).await;
    assert_eq!(
        while_running, 1,
        "the idle subtask stopped holding back the watermark"
    );
    assert_eq!(total, 2, "stopping flushes the open window too");
    let (while_running, total) = run(false).await;
    assert_eq!(
        while_running, 0,
        "without idleness the empty subtask holds every window back"
    );
    assert_eq!(total, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_split_has_its_own_watermark_so_a_lagging_split_is_not_late() {
    use arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    // Split 0 runs 10 s ahead of split 1; one subtask reads both, row by row.
    let split = |k: i64, from: i64| {
        RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![k; 50])),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    (0..50).map(|i| from + i * 100),
                )),
            ],
        )
        .unwrap()
    };
    let (mut registry, collected) = registry_with_collect();
    registry.register_source(InterleavedConnector {
        splits: vec![split(0, 10_000), split(1, 0)],
        fail_after: None,
    });
    let p = Pipeline::new("splits");
    // One row per batch, so a watermark follows every row.
    p.registry(registry).batching(1, Duration::from_millis(1));
    p.source(sluice::plan::ConnectorSpec::new("interleaved"))
        .event_time("ts")
        .key_by(["k"])
        .window(Window::tumbling(Duration::from_secs(1)))
        .aggregate([count_star().alias("n")])
        .sink(collect());
    let handle = p.start().await.unwrap();
    let metrics = handle.metrics();
    handle.wait().await.unwrap();
    assert_eq!(
        metrics.late_records(),
        0,
        "a subtask-wide watermark would have made split 1 late"
    );
    let counts: Vec<String> = canonical(&collected.batches())
        .into_iter()
        .filter(|r| r.contains("\"n\":10"))
        .collect();
    assert_eq!(counts.len(), 10, "5 full windows per split");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_task_never_makes_downstream_windows_fire_with_part_of_their_rows() {
    use arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    // 100 rows, all in the first 10-second window; the source fails after 60 of them.
    let rows = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(vec![7; 100])),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                (0..100).map(|i| i * 10),
            )),
        ],
    )
    .unwrap();
    let (mut registry, collected) = registry_with_collect();
    registry.register_source(InterleavedConnector {
        splits: vec![rows],
        fail_after: Some(60),
    });
    let p = Pipeline::new("upstream-fails");
    p.registry(registry).batching(1, Duration::from_millis(1));
    // key_by: the window runs in a task of its own, fed through a channel.
    p.source(sluice::plan::ConnectorSpec::new("interleaved"))
        .event_time("ts")
        .key_by(["k"])
        .window(Window::tumbling(Duration::from_secs(10)))
        .aggregate([count_star().alias("n")])
        .sink(collect());
    let e = p.run().await.unwrap_err();
    assert!(
        e.message.contains("injected source failure"),
        "the root cause: {e}"
    );
    assert_eq!(
        collected.rows(),
        0,
        "the window fired with 60 of its 100 rows when its upstream failed: {:?}",
        canonical(&collected.batches())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processing_time_windows_close_on_the_wall_clock_without_more_input() {
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    let rows = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)])),
        vec![Arc::new(Int64Array::from(vec![1, 1, 2]))],
    )
    .unwrap();
    let (mut registry, collected) = registry_with_collect();
    // One batch, then the source waits forever: only the clock can close the window.
    registry.register_source(StallingConnector { rows });
    let p = Pipeline::new("processing-time");
    p.registry(registry);
    p.source(sluice::plan::ConnectorSpec::new("stalling"))
        .processing_time()
        .key_by(["k"])
        .window(Window::tumbling(Duration::from_millis(200)))
        .aggregate([count_star().alias("n")])
        .sink(collect());
    let handle = p.start().await.unwrap();
    let stop = handle.stop_handle();
    let waiter = tokio::spawn(handle.wait());
    let mut rows_while_running = 0;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        rows_while_running = collected.rows();
        if rows_while_running > 0 {
            break;
        }
    }
    stop.stop().await;
    waiter.await.unwrap().unwrap();
    assert_eq!(
        rows_while_running, 2,
        "the window fired on the wall clock: one row per key"
    );
    let out = canonical(&collected.batches());
    assert!(
        out[0].contains("\"k\":1") && out[0].contains("\"n\":2"),
        "{out:?}"
    );
}

/// Every line of the files under `dir`.
fn lines_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.extend(
                std::fs::read_to_string(&p)
                    .unwrap()
                    .lines()
                    .map(String::from),
            );
        }
    }
    out
}

#[test]
fn flink_statement_sets_run_their_inserts_as_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let script = dir.path().join("set.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '1000');
CREATE TABLE a (auction BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');
CREATE TABLE b (price BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');
CREATE TEMPORARY VIEW cheap AS SELECT auction, price FROM bid WHERE price < 1000000;
EXECUTE STATEMENT SET BEGIN
  INSERT INTO a SELECT auction FROM cheap;
  INSERT INTO b SELECT price FROM bid;
END;",
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--quiet"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 46 of every 50 Nexmark events are bids.
    assert_eq!(lines_under(&b).len(), 920);
    let cheap = lines_under(&a).len();
    assert!(cheap > 0 && cheap <= 920, "{cheap}");

    // A statement set holds INSERTs only, and needs its END.
    std::fs::write(
        &script,
        "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '10');
BEGIN STATEMENT SET;
SELECT * FROM bid;
END;",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--quiet"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("set.sql:3:1: ") && err.contains("INSERT INTO statements only"),
        "{err}"
    );
}

/// `sluice bench file` runs a script over a file (`$INPUT`) to its end and reports what
/// it read and wrote, with rates, latency and memory; `--rate` paces its source; a
/// missing or unused `$INPUT`, and a source it cannot pace, are refused with the reason.
#[test]
fn the_file_bench_reports_a_scripts_run_over_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    let lines: String = (0..3_000)
        .map(|i| {
            format!(
                "{{\"auction\":{},\"bidder\":{i},\"price\":{},\"date_time\":{}}}\n",
                i % 7,
                i * 3,
                i * 10
            )
        })
        .collect();
    std::fs::write(&input, lines).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/bench/bids_per_auction.sql"
    );
    let bench = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["bench", "file", "--sql", script, "--json"])
            .args(args)
            .output()
            .unwrap()
    };
    let input_arg = input.to_str().unwrap();
    for extra in [&[][..], &["-p", "2"], &["--rate", "20000"]] {
        let mut args = vec!["--input", input_arg];
        args.extend(extra);
        let out = bench(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["source_rows"], 3_000, "{extra:?}: {r}");
        // 3 000 bids over 30 s of event time: 3 windows of 10 s, each with all 7 auctions.
        assert_eq!(r["sink_rows"], 21, "{extra:?}: {r}");
        assert_eq!(r["dead_letters"], 0, "{r}");
        for field in [
            "rows_per_sec",
            "rows_per_cpu_sec",
            "latency_p99_ms",
            "peak_rss_mb",
        ] {
            assert!(r[field].as_f64().is_some_and(|v| v > 0.0), "{field}: {r}");
        }
    }
    let missing = bench(&[]);
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("give it with --input PATH"),
        "{missing:?}"
    );
    let nexmark = dir.path().join("nexmark.sql");
    std::fs::write(
        &nexmark,
        "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '100');
         CREATE TABLE sink (auction BIGINT) WITH ('connector' = 'blackhole');
         INSERT INTO sink SELECT auction FROM bid;",
    )
    .unwrap();
    let unused = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "bench",
            "file",
            "--sql",
            nexmark.to_str().unwrap(),
            "--input",
            input_arg,
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&unused.stderr).contains("has no `$INPUT`"),
        "{unused:?}"
    );
}

/// Errors as a SQL user reads them, from `sluice run` with standard error not a terminal:
/// one `error: ` prefix and no label, a planning error at its file, line and column with
/// the line and a caret; a run-time error naming the operator, the expression as written
/// and the row it failed on, once; no colour codes; no Rust stack trace unless
/// `--verbose`.
#[test]
fn errors_read_as_sql_errors_without_colours_or_stack_traces() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, sql: &str, extra: &[&str]| {
        let path = dir.path().join(name);
        std::fs::write(&path, sql).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("run")
            .arg(&path)
            .args(extra)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let planning = run(
        "typo.sql",
        "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '10');\n\
         CREATE TABLE sink (\n  auction BIGNT\n) WITH ('connector' = 'blackhole');\n\
         INSERT INTO sink SELECT auction FROM bid;\n",
        &[],
    );
    let path = dir.path().join("typo.sql");
    assert_eq!(
        planning,
        format!(
            "error: {}:3:11: unknown type `BIGNT` for column `auction`; did you mean BIGINT?\n 3 |   auction BIGNT\n   |           ^\n",
            path.display()
        )
    );
    let failing = "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '10');\n\
         CREATE TABLE sink (x BIGINT) WITH ('connector' = 'blackhole');\n\
         INSERT INTO sink SELECT price / (price - price) FROM bid;\n";
    let running = run("zero.sql", failing, &["--quiet"]);
    assert!(!running.contains('\u{1b}'), "colour codes: {running:?}");
    let last = running.lines().last().unwrap();
    assert!(
        last.starts_with("error: in operator `project`: `price / (price - price)` failed on the row (auction=1000, bidder=1001, price=")
            && last.ends_with("): division by zero"),
        "{running}"
    );
    assert_eq!(
        running.matches("division by zero").count(),
        2,
        "the log line and the error: {running}"
    );
    assert!(!running.contains("user error"), "{running}");
    assert!(
        !running.contains("sluice_runtime::expr::evaluate"),
        "a stack trace: {running}"
    );
    let verbose = run("zero.sql", failing, &["--quiet", "--verbose"]);
    assert!(
        verbose.contains("sluice_runtime::expr::evaluate"),
        "{verbose}"
    );
}

/// An expression as deep as a script may hold plans and runs (planning on a thread of its
/// own, operators on workers with room for it); a deeper one is refused with its line and
/// column, and the process exits with an error instead of overflowing its stack.
#[test]
fn the_deepest_allowed_expression_runs_and_a_deeper_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sum = vec!["price"; 251].join(" + ");
    let script = |expr: &str| {
        format!(
            "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '2000');
             CREATE TABLE sink (s BIGINT) WITH ('connector' = 'blackhole');
             INSERT INTO sink SELECT {expr} FROM bid;"
        )
    };
    let run = |name: &str, sql: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, sql).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--quiet"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let deep = run("deep.sql", script(&sum));
    assert!(
        deep.status.success(),
        "{}",
        String::from_utf8_lossy(&deep.stderr)
    );
    let deeper = run("deeper.sql", script(&format!("{sum} + price + price")));
    assert_eq!(deeper.status.code(), Some(1), "an error exit, not a crash");
    let err = String::from_utf8_lossy(&deeper.stderr);
    assert!(err.contains("more than 250 operators"), "{err}");
}
