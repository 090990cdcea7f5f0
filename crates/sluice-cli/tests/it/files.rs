//! Files: a streaming aggregate checked against DataFusion's batch GROUP BY over the
//! same file; CSV / JSON / Parquet round trips; dead letters for malformed records.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, TimeUnit};
use datafusion::prelude::{JsonReadOptions, SessionContext};
use sluice::prelude::*;

use crate::support::*;

fn read_jsonl(dir: &std::path::Path, schema: Arc<Schema>) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "jsonl"))
    {
        let r = arrow::json::ReaderBuilder::new(Arc::clone(&schema))
            .build(std::io::BufReader::new(std::fs::File::open(f).unwrap()))
            .unwrap();
        out.extend(r.map(Result::unwrap));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_keyed_aggregate_equals_batch_group_by() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids");
    let output = dir.path().join("agg");

    // 1. Write 200k Nexmark events' bids to JSON lines, at parallelism 2 (two files).
    let p = Pipeline::new("write-bids");
    p.parallelism(2);
    p.source(NexmarkSource::bids().events(200_000).seed(11))
        .sink(FileSink::json(&input));
    p.run().await.unwrap();

    // 2. Stream the files through a keyed running aggregate at parallelism 2.
    let p = Pipeline::new("stream-agg");
    p.parallelism(2);
    p.source(FileSource::json(&input).with_schema(sluice::connectors::nexmark::bid_schema()))
        .event_time("date_time")
        .key_by(["auction"])
        .aggregate([
            count_star().alias("n"),
            sum(col("price")).alias("total"),
            min(col("price")).alias("lo"),
            max(col("price")).alias("hi"),
            avg(col("price")).alias("mean"),
        ])
        .sink(FileSink::debezium_json(&output));
    p.run().await.unwrap();

    // The changelog, applied in order per key: `c` adds the `after` row, `d` takes the
    // `before` row back; exactly one row per key must remain.
    let row = DataType::Struct(
        vec![
            Field::new("auction", DataType::Int64, false),
            Field::new("n", DataType::Int64, false),
            Field::new("total", DataType::Int64, true),
            Field::new("lo", DataType::Int64, true),
            Field::new("hi", DataType::Int64, true),
            Field::new("mean", DataType::Float64, true),
        ]
        .into(),
    );
    let out_schema = Arc::new(Schema::new(vec![
        Field::new("before", row.clone(), true),
        Field::new("after", row, true),
        Field::new("op", DataType::Utf8, false),
    ]));
    type Values = (i64, i64, i64, i64, String);
    let mut held: BTreeMap<i64, Vec<Values>> = BTreeMap::new();
    for b in read_jsonl(&output, out_schema) {
        let ops = b.column(2).as_string::<i32>();
        for i in 0..b.num_rows() {
            let image = b
                .column(if ops.value(i) == "c" { 1 } else { 0 })
                .as_struct();
            let c = |j: usize| image.column(j).as_primitive::<Int64Type>().value(i);
            let mean = image.column(5).as_primitive::<Float64Type>().value(i);
            let values = (c(1), c(2), c(3), c(4), format!("{mean:.6}"));
            let rows = held.entry(c(0)).or_default();
            match ops.value(i) {
                "c" => rows.push(values),
                _ => {
                    let at = rows.iter().position(|r| *r == values).unwrap_or_else(|| {
                        panic!("auction {}: `d` of {values:?}, which is not there", c(0))
                    });
                    rows.remove(at);
                }
            }
        }
    }
    let streamed: BTreeMap<i64, Values> = held
        .into_iter()
        .map(|(k, mut rows)| {
            assert_eq!(rows.len(), 1, "auction {k}: {rows:?}");
            (k, rows.remove(0))
        })
        .collect();

    // 3. The same GROUP BY in DataFusion, as a batch over the same files.
    let ctx = SessionContext::new();
    ctx.register_json(
        "bids",
        input.to_str().unwrap(),
        JsonReadOptions::default().file_extension(".jsonl"),
    )
    .await
    .unwrap();
    let batches = ctx
        .sql(
            "SELECT auction, count(*) AS n, sum(price) AS total, min(price) AS lo, max(price) AS hi, \
             avg(price) AS mean FROM bids GROUP BY auction ORDER BY auction",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut expected = BTreeMap::new();
    for b in &batches {
        let c = |i: usize| b.column(i).as_primitive::<Int64Type>().clone();
        let (a, n, t, lo, hi) = (c(0), c(1), c(2), c(3), c(4));
        let mean = b.column(5).as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            expected.insert(
                a.value(i),
                (
                    n.value(i),
                    t.value(i),
                    lo.value(i),
                    hi.value(i),
                    format!("{:.6}", mean.value(i)),
                ),
            );
        }
    }
    assert_eq!(expected.len(), streamed.len());
    assert!(expected.len() > 100, "the test data has many keys");
    assert_eq!(streamed, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_json_and_parquet_round_trip() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("score", DataType::Float64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("ok", DataType::Boolean, false),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let datagen = || {
        DatagenSource::new(Arc::clone(&schema))
            .rows(3_000)
            .seed_field()
    };
    let reference = {
        let (registry, collected) = registry_with_collect();
        let p = Pipeline::new("datagen");
        p.registry(registry);
        p.source(datagen()).sink(collect());
        p.run().await.unwrap();
        canonical(&collected.batches())
    };
    assert_eq!(reference.len(), 3_000);
    let dir = tempfile::tempdir().unwrap();
    for (format, sink, source) in [
        (
            "csv",
            FileSink::csv(dir.path().join("csv")).with_header(),
            FileSource::csv(dir.path().join("csv")).with_header(),
        ),
        (
            "json",
            FileSink::json(dir.path().join("json")),
            FileSource::json(dir.path().join("json")),
        ),
        (
            "parquet",
            FileSink::parquet(dir.path().join("parquet")),
            FileSource::parquet(dir.path().join("parquet")),
        ),
    ] {
        let p = Pipeline::new("write");
        p.parallelism(2);
        p.source(datagen()).sink(sink);
        p.run().await.unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path().join(format))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| n.starts_with("part-")),
            "no in-progress files left: {names:?}"
        );

        let (registry, collected) = registry_with_collect();
        let p = Pipeline::new("read");
        p.registry(registry);
        p.source(source.with_schema(Arc::clone(&schema)))
            .event_time("at")
            .sink(collect());
        p.run().await.unwrap();
        assert_eq!(
            canonical(&collected.batches()),
            reference,
            "{format} round trip"
        );
    }
}

trait SeedField {
    fn seed_field(self) -> Self;
}

impl SeedField for DatagenSource {
    fn seed_field(self) -> Self {
        self.field("id", "kind", "sequence")
            .field("id", "start", 1)
            .field("id", "end", 1_000_000)
            .field("score", "null-rate", 0.1)
            .field("name", "length", 8)
            .field("name", "null-rate", 0.1)
            .field("at", "min", 1_700_000_000_000i64)
            .field("at", "max", 1_700_000_100_000i64)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_go_to_the_dead_letter_output_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"k\":\"a\",\"v\":1}\n{\"k\":\"b\",\"v\":\n{\"k\":\"c\",\"v\":3}\n\n{\"k\":\"d\",\"v\":\"four\"}\n{\"k\":\"e\",\"v\":5}\n",
    )
    .unwrap();
    let dlq = dir.path().join("dead.jsonl");
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
    ]));
    let (registry, collected) = registry_with_collect();
    let p = Pipeline::new("dlq");
    p.registry(registry).dead_letters(&dlq);
    p.source(FileSource::json(&input).with_schema(schema))
        .sink(collect());
    let handle = p.start().await.unwrap();
    let metrics = handle.metrics();
    handle.wait().await.unwrap();

    let keys: Vec<String> = collected
        .batches()
        .iter()
        .flat_map(|b| {
            let k = b.column(0).as_string::<i32>();
            (0..k.len())
                .map(|i| k.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(keys, ["a", "c", "e"], "good records keep flowing, in order");
    assert_eq!(metrics.dead_letters(), 2);
    let dead: Vec<serde_json::Value> = std::fs::read_to_string(&dlq)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 2);
    let path = input.display().to_string();
    assert_eq!(dead[0]["position"], format!("{path}:2"));
    assert_eq!(dead[0]["raw"], "{\"k\":\"b\",\"v\":");
    assert_eq!(dead[1]["position"], format!("{path}:5"));
    assert_eq!(dead[1]["raw"], "{\"k\":\"d\",\"v\":\"four\"}");
    assert!(!dead[1]["error"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn lines_longer_than_the_read_buffer_crlf_and_an_unended_last_line_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    // A line of 3 MB (the reader's buffer is 1 MB and doubles), CRLF endings, blank
    // lines, and a last line with no newline.
    let long = "x".repeat(3 << 20);
    let mut text = String::new();
    for i in 0..5000 {
        text.push_str(&format!("{{\"k\":\"{i}\",\"v\":{i}}}\r\n"));
        if i == 2500 {
            text.push_str(&format!("{{\"k\":\"{long}\",\"v\":-1}}\n\n"));
        }
    }
    text.push_str("{\"k\":\"last\",\"v\":5000}");
    std::fs::write(&input, &text).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
    ]));
    let (registry, collected) = registry_with_collect();
    let p = Pipeline::new("long-lines");
    p.registry(registry)
        .dead_letters(dir.path().join("dead.jsonl"));
    p.source(FileSource::json(&input).with_schema(schema))
        .sink(collect());
    let handle = p.start().await.unwrap();
    let metrics = handle.metrics();
    handle.wait().await.unwrap();
    assert_eq!(metrics.dead_letters(), 0);
    let mut rows = Vec::new();
    for b in collected.batches() {
        let k = b.column(0).as_string::<i32>();
        let v = b.column(1).as_primitive::<Int64Type>();
        rows.extend((0..b.num_rows()).map(|i| (k.value(i).to_string(), v.value(i))));
    }
    assert_eq!(rows.len(), 5002, "every line, each once");
    assert_eq!(rows[2501], (long, -1));
    assert_eq!(rows[5001], ("last".to_string(), 5000));
    let numbered: Vec<i64> = rows.iter().map(|r| r.1).filter(|&v| v >= 0).collect();
    assert_eq!(numbered, (0..=5000).collect::<Vec<_>>(), "in order");
    assert!(
        rows.iter()
            .all(|(k, v)| *v < 0 || *k == v.to_string() || k == "last")
    );
}

/// Streams `input` through a keyed window aggregate and returns canonical rows
/// `auction,window_start_ms,n,total,hi`.
async fn streamed_windows(
    input: &std::path::Path,
    window: Window,
    parallelism: usize,
) -> Vec<String> {
    let (registry, collected) = registry_with_collect();
    let p = Pipeline::new("windows");
    p.registry(registry).parallelism(parallelism);
    p.source(FileSource::json(input).with_schema(sluice::connectors::nexmark::bid_schema()))
        .event_time("date_time")
        .max_out_of_orderness(Duration::from_millis(200))
        .key_by(["auction"])
        .window(window)
        .aggregate([
            count_star().alias("n"),
            sum(col("price")).alias("total"),
            max(col("price")).alias("hi"),
        ])
        .sink(collect());
    let handle = p.start().await.unwrap();
    let metrics = handle.metrics();
    handle.wait().await.unwrap();
    assert_eq!(
        metrics.late_records(),
        0,
        "no row may be late within the watermark bound"
    );
    let mut rows = Vec::new();
    for b in collected.batches() {
        let a = b.column(0).as_primitive::<Int64Type>();
        let ws = b
            .column(1)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let we = b
            .column(2)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let n = b.column(3).as_primitive::<Int64Type>();
        let t = b.column(4).as_primitive::<Int64Type>();
        let hi = b.column(5).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            assert!(we.value(i) > ws.value(i));
            rows.push(format!(
                "{},{},{},{},{}",
                a.value(i),
                ws.value(i),
                n.value(i),
                t.value(i),
                hi.value(i)
            ));
        }
    }
    rows.sort();
    rows
}

/// Compares sorted row lists, printing only the differences.
#[track_caller]
fn assert_same_rows(streamed: Vec<String>, batch: Vec<String>) {
    let a: std::collections::BTreeSet<_> = streamed.iter().collect();
    let b: std::collections::BTreeSet<_> = batch.iter().collect();
    let only_streamed: Vec<_> = a.difference(&b).take(10).collect();
    let only_batch: Vec<_> = b.difference(&a).take(10).collect();
    assert!(
        streamed == batch,
        "{} streamed rows, {} batch rows\nonly streamed: {only_streamed:?}\nonly batch: {only_batch:?}",
        streamed.len(),
        batch.len()
    );
}

async fn batch_windows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let mut rows = Vec::new();
    for b in ctx.sql(sql).await.unwrap().collect().await.unwrap() {
        let c = |i: usize| b.column(i).as_primitive::<Int64Type>().clone();
        let (a, ws, n, t, hi) = (c(0), c(1), c(2), c(3), c(4));
        for i in 0..b.num_rows() {
            rows.push(format!(
                "{},{},{},{},{}",
                a.value(i),
                ws.value(i),
                n.value(i),
                t.value(i),
                hi.value(i)
            ));
        }
    }
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_windows_equal_batch_group_by() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids");
    // 100k events over 10 s of event time, written by two subtasks, read back by two
    // (one file each, in order; the window operator merges their watermarks by minimum).
    // Read by one subtask, the second file would come after the first file's watermark
    // and its rows would be late, as in any engine with sequential splits.
    let p = Pipeline::new("write-bids");
    p.parallelism(2);
    p.source(
        NexmarkSource::bids()
            .events(100_000)
            .first_event_rate(10_000)
            .seed(5),
    )
    .sink(FileSink::json(&input));
    p.run().await.unwrap();

    let ctx = SessionContext::new();
    let schema = sluice::connectors::nexmark::bid_schema();
    ctx.register_json(
        "bids",
        input.to_str().unwrap(),
        JsonReadOptions::default()
            .file_extension(".jsonl")
            .schema(&schema),
    )
    .await
    .unwrap();
    ctx.sql("CREATE VIEW b AS SELECT auction, price, CAST(date_time AS BIGINT) AS t FROM bids")
        .await
        .unwrap();

    let tumbling = batch_windows(
        &ctx,
        "SELECT auction, (t / 1000) * 1000 AS ws, count(*), sum(price), max(price) FROM b GROUP BY 1, 2",
    )
    .await;
    assert!(tumbling.len() > 1_000);
    assert_same_rows(
        streamed_windows(&input, Window::tumbling(Duration::from_secs(1)), 2).await,
        tumbling,
    );

    // Hopping 2 s every 500 ms: each row is in the 4 windows starting at its
    // 500 ms bucket and the 3 before.
    let hopping = batch_windows(
        &ctx,
        "SELECT auction, ws, count(*), sum(price), max(price) FROM ( \
           SELECT auction, price, (t / 500) * 500 - 500 * j AS ws FROM b \
           CROSS JOIN (VALUES (0), (1), (2), (3)) AS shifts(j)) GROUP BY 1, 2",
    )
    .await;
    assert_same_rows(
        streamed_windows(
            &input,
            Window::hopping(Duration::from_secs(2), Duration::from_millis(500)),
            2,
        )
        .await,
        hopping,
    );
}

fn late_schema() -> arrow::datatypes::SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("v", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
    ]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rows_can_be_routed_to_any_sink() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        [
            r#"{"k":"a","v":1,"ts":1000}"#,
            r#"{"k":"a","v":2,"ts":5000}"#,
            r#"{"k":"a","v":3,"ts":12000}"#,
            r#"{"k":"a","v":4,"ts":3000}"#,
            r#"{"k":"a","v":5,"ts":13000}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let schema = late_schema();
    let late_dir = dir.path().join("late");
    let (registry, collected) = registry_with_collect();
    let p = Pipeline::new("late");
    // One row per batch, so a watermark follows every row.
    p.registry(registry).batching(1, Duration::from_millis(1));
    let windows = p
        .source(FileSource::json(&input).with_schema(schema))
        .event_time("ts")
        .key_by(["k"])
        .window(Window::tumbling(Duration::from_secs(10)))
        .aggregate([sum(col("v")).alias("total")]);
    windows.sink(collect());
    windows.late_rows().sink(FileSink::json(&late_dir));
    let explain = p.explain().unwrap();
    assert!(explain.contains("(side output `late`)"), "{explain}");
    let handle = p.start().await.unwrap();
    let metrics = handle.metrics();
    handle.wait().await.unwrap();

    assert_eq!(
        canonical(&collected.batches()),
        [
            r#"{"k":"a","window_start":"1970-01-01T00:00:00","window_end":"1970-01-01T00:00:10","total":3}"#,
            r#"{"k":"a","window_start":"1970-01-01T00:00:10","window_end":"1970-01-01T00:00:20","total":8}"#,
        ]
    );
    assert_eq!(metrics.late_records(), 1);
    assert_eq!(
        metrics.dead_letters(),
        0,
        "routed late rows are not dead letters"
    );
    let late = std::fs::read_to_string(late_dir.join("part-0.jsonl")).unwrap();
    let late: serde_json::Value = serde_json::from_str(late.trim()).unwrap();
    assert_eq!(
        (&late["k"], &late["v"], &late["ts"]),
        (&"a".into(), &4.into(), &3000.into())
    );
    // The watermark it missed (12 s, from the row at 12 s) and why, as columns.
    assert_eq!(late["missed_watermark"], "1970-01-01T00:00:12");
    let reason = late["late_reason"].as_str().unwrap();
    assert!(
        reason.contains("every window it belongs to closed"),
        "{reason}"
    );

    // The same rows without a consumer of the late rows: the late row goes to the job's
    // dead-letter output with the same reason, counted as late and as a dead letter.
    let dead = dir.path().join("dead.jsonl");
    let (registry, collected) = registry_with_collect();
    let p = Pipeline::new("late-to-dead-letters");
    p.registry(registry)
        .batching(1, Duration::from_millis(1))
        .dead_letters(&dead);
    p.source(FileSource::json(&input).with_schema(late_schema()))
        .event_time("ts")
        .key_by(["k"])
        .window(Window::tumbling(Duration::from_secs(10)))
        .aggregate([sum(col("v")).alias("total")])
        .sink(collect());
    let handle = p.start().await.unwrap();
    let metrics = handle.metrics();
    handle.wait().await.unwrap();
    assert_eq!(canonical(&collected.batches()).len(), 2);
    assert_eq!(metrics.late_records(), 1);
    assert_eq!(metrics.dead_letters(), 1);
    let dead = std::fs::read_to_string(&dead).unwrap();
    let lines: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{dead}");
    let error = lines[0]["error"].as_str().unwrap();
    assert!(
        error.contains("every window it belongs to closed"),
        "{error}"
    );
    let raw: serde_json::Value = serde_json::from_str(lines[0]["raw"].as_str().unwrap()).unwrap();
    assert_eq!((&raw["k"], &raw["v"]), (&"a".into(), &4.into()), "{dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn highest_bid_per_window_matches_the_batch_join() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids");
    let p = Pipeline::new("write-bids");
    p.source(
        NexmarkSource::bids()
            .events(50_000)
            .first_event_rate(5_000)
            .seed(9),
    )
    .sink(FileSink::json(&input));
    p.run().await.unwrap();

    // Streaming: q7's shape, with 1 s windows (10 windows over 10 s of event time).
    let (registry, collected) = registry_with_collect();
    let p = Pipeline::new("q7");
    p.registry(registry);
    let by_price = || vec![col("price").sort(false, false)];
    p.source(FileSource::json(&input).with_schema(sluice::connectors::nexmark::bid_schema()))
        .event_time("date_time")
        .window_all(Window::tumbling(Duration::from_secs(1)))
        .aggregate([
            max(col("price")).alias("price"),
            first_value(col("auction"), by_price()).alias("auction"),
            first_value(col("bidder"), by_price()).alias("bidder"),
        ])
        .sink(collect());
    p.run().await.unwrap();
    let mut streamed = Vec::new();
    for b in collected.batches() {
        let ws = b
            .column(0)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let (price, auction, bidder) = (
            b.column(2).as_primitive::<Int64Type>(),
            b.column(3).as_primitive::<Int64Type>(),
            b.column(4).as_primitive::<Int64Type>(),
        );
        for i in 0..b.num_rows() {
            streamed.push((
                ws.value(i),
                price.value(i),
                auction.value(i),
                bidder.value(i),
            ));
        }
    }

    // Batch: Nexmark q7's join of bids with the maximum price per window.
    let ctx = SessionContext::new();
    let schema = sluice::connectors::nexmark::bid_schema();
    ctx.register_json(
        "bids",
        input.to_str().unwrap(),
        JsonReadOptions::default()
            .file_extension(".jsonl")
            .schema(&schema),
    )
    .await
    .unwrap();
    let batches = ctx
        .sql(
            "WITH b AS (SELECT auction, bidder, price, (CAST(date_time AS BIGINT) / 1000) * 1000 AS ws FROM bids), \
             m AS (SELECT ws, max(price) AS maxprice FROM b GROUP BY ws) \
             SELECT b.ws, b.price, b.auction, b.bidder FROM b JOIN m ON b.ws = m.ws AND b.price = m.maxprice",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut top: BTreeMap<i64, Vec<(i64, i64, i64)>> = BTreeMap::new();
    for b in &batches {
        let c = |i: usize| b.column(i).as_primitive::<Int64Type>().clone();
        let (ws, price, auction, bidder) = (c(0), c(1), c(2), c(3));
        for i in 0..b.num_rows() {
            top.entry(ws.value(i)).or_default().push((
                price.value(i),
                auction.value(i),
                bidder.value(i),
            ));
        }
    }
    assert_eq!(streamed.len(), top.len(), "one result per window");
    assert!(top.len() >= 10);
    for (ws, price, auction, bidder) in streamed {
        let winners = &top[&ws];
        assert!(
            winners.contains(&(price, auction, bidder)),
            "window {ws}: {price}/{auction}/{bidder} is not among the highest bids {winners:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_items_keep_every_tie_and_match_the_batch_rank() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids");
    let p = Pipeline::new("write-bids");
    p.parallelism(2);
    p.source(
        NexmarkSource::bids()
            .events(30_000)
            .first_event_rate(1_000)
            .seed(11),
    )
    .sink(FileSink::json(&input));
    p.run().await.unwrap();

    // Streaming: Nexmark q5's shape with 40 ms windows sliding every 10 ms (about 37 bids
    // per window, so auctions tie for the most), at parallelism 2.
    let (registry, collected) = registry_with_collect();
    let p = Pipeline::new("q5");
    p.registry(registry).parallelism(2);
    p.source(FileSource::json(&input).with_schema(sluice::connectors::nexmark::bid_schema()))
        .event_time("date_time")
        .max_out_of_orderness(Duration::from_millis(200))
        .key_by(["auction"])
        .window(Window::hopping(
            Duration::from_millis(40),
            Duration::from_millis(10),
        ))
        .aggregate([count_star().alias("num")])
        .top_n_per_window(1, "num", true)
        .select([col("window_start"), col("auction"), col("num")])
        .sink(collect());
    let handle = p.start().await.unwrap();
    let metrics = handle.metrics();
    handle.wait().await.unwrap();
    assert_eq!(metrics.late_records(), 0);
    let mut streamed = Vec::new();
    for b in collected.batches() {
        let ws = b
            .column(0)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let (a, n) = (
            b.column(1).as_primitive::<Int64Type>(),
            b.column(2).as_primitive::<Int64Type>(),
        );
        for i in 0..b.num_rows() {
            streamed.push(format!("{},{},{}", ws.value(i), a.value(i), n.value(i)));
        }
    }
    streamed.sort();

    // Batch: count per auction and hopping window, then every auction ranked first.
    let ctx = SessionContext::new();
    let schema = sluice::connectors::nexmark::bid_schema();
    ctx.register_json(
        "bids",
        input.to_str().unwrap(),
        JsonReadOptions::default()
            .file_extension(".jsonl")
            .schema(&schema),
    )
    .await
    .unwrap();
    let batches = ctx
        .sql(
            "WITH w AS (SELECT auction, (CAST(date_time AS BIGINT) / 10) * 10 - 10 * j AS ws \
               FROM bids CROSS JOIN (VALUES (0), (1), (2), (3)) AS shifts(j)), \
             c AS (SELECT ws, auction, count(*) AS num FROM w GROUP BY ws, auction), \
             r AS (SELECT ws, auction, num, RANK() OVER (PARTITION BY ws ORDER BY num DESC) AS rk FROM c) \
             SELECT ws, auction, num FROM r WHERE rk = 1",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut batch = Vec::new();
    for b in &batches {
        let c = |i: usize| b.column(i).as_primitive::<Int64Type>().clone();
        let (ws, a, n) = (c(0), c(1), c(2));
        for i in 0..b.num_rows() {
            batch.push(format!("{},{},{}", ws.value(i), a.value(i), n.value(i)));
        }
    }
    batch.sort();
    let windows: std::collections::BTreeSet<&str> =
        batch.iter().map(|r| r.split(',').next().unwrap()).collect();
    assert!(
        batch.len() > windows.len(),
        "the data has ties, so the test checks that they are kept ({} rows, {} windows)",
        batch.len(),
        windows.len()
    );
    assert_same_rows(streamed, batch);
}

/// A sink `PARTITIONED BY` a minute commits each partition (its `_SUCCESS` file) once the
/// watermark passes the partition's time plus the commit delay: while the job runs (its
/// checkpoints going on after a source subtask with nothing to read finished), and never
/// before every row of the partition is in its published files.
#[test]
fn partitions_are_committed_once_the_watermark_passes_them_and_never_early() {
    use std::collections::BTreeSet;
    let dir = tempfile::tempdir().unwrap();
    // Six minutes of event time, a row every 100 ms: 600 rows a minute, in one file. At
    // parallelism 2 one source subtask has nothing to read and finishes at once:
    // checkpoints (and so commits) go on without it.
    let input = dir.path().join("in.json");
    let base = 1_704_103_200_000i64; // 2024-01-01 10:00:00
    let lines: String = (0..3600)
        .map(|i| {
            let t = chrono_like(base + i * 100);
            format!("{{\"v\": {i}, \"ts\": \"{t}\"}}\n")
        })
        .collect();
    std::fs::write(&input, lines).unwrap();
    let out = dir.path().join("out");
    let job = dir.path().join("job.sql");
    std::fs::write(
        &job,
        format!(
            "CREATE TABLE src (v BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
             WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json', 'rows-per-second' = '1200');
             CREATE TABLE minutes (v BIGINT, ts TIMESTAMP(3), hm STRING) PARTITIONED BY (hm) WITH (
               'connector' = 'filesystem', 'path' = '{}', 'format' = 'csv',
               'sink.partition-commit.trigger' = 'partition-time',
               'sink.partition-commit.delay' = '1 min',
               'sink.partition-commit.policy.kind' = 'success-file',
               'partition.time-extractor.timestamp-pattern' = '2024-01-01 $hm:00');
             INSERT INTO minutes SELECT v, ts, DATE_FORMAT(ts, 'HH:mm') FROM src;",
            input.display(),
            out.display()
        ),
    )
    .unwrap();
    let checkpoints = dir.path().join("chk");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(&job)
        .args(["--quiet", "-p", "2", "--checkpoint-interval", "100ms"])
        .arg("--checkpoint-dir")
        .arg(&checkpoints)
        .args(["--delivery", "exactly-once"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rows_in = |partition: &std::path::Path| -> usize {
        std::fs::read_dir(partition)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                !n.starts_with('.') && !n.starts_with('_')
            })
            .map(|e| std::fs::read_to_string(e.path()).unwrap().lines().count())
            .sum()
    };
    let mut committed: BTreeSet<String> = BTreeSet::new();
    let mut while_running = 0;
    let mut check = |running: bool| {
        let Ok(entries) = std::fs::read_dir(&out) else {
            return;
        };
        for e in entries.map(|e| e.unwrap()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || committed.contains(&name) {
                continue;
            }
            if e.path().join("_SUCCESS").exists() {
                assert_eq!(
                    rows_in(&e.path()),
                    600,
                    "{name} was committed before all its rows were published"
                );
                // Committed while the last minute was still being written.
                let last = out.join("hm=10%3A05");
                let input_left = !last.exists() || rows_in(&last) < 600;
                while_running += usize::from(running && input_left);
                committed.insert(name);
            }
        }
    };
    while child.try_wait().unwrap().is_none() {
        check(true);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(child.wait().unwrap().success());
    check(false);
    let all: Vec<String> = (0..6).map(|m| format!("hm=10%3A0{m}")).collect();
    assert_eq!(committed.iter().cloned().collect::<Vec<_>>(), all);
    assert!(
        while_running >= 1,
        "no partition was committed while the input was still being read (the watermark passed five of them)"
    );
}

/// `2024-01-01 10:00:00.100` for epoch milliseconds (UTC).
fn chrono_like(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let day = secs.div_euclid(86_400);
    let s = secs.rem_euclid(86_400);
    assert_eq!(day, 19_723, "the test's times are all on 2024-01-01");
    format!(
        "2024-01-01 {:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        ms.rem_euclid(1000)
    )
}

/// A job named `name` at `parallelism`, checkpointing to `cp`, counting and summing the
/// bids of `source` per auction in 10 s windows of `date_time` (100 ms out of order),
/// after `filter` when there is one; with what it collects.
fn bid_windows(
    name: &str,
    parallelism: usize,
    cp: &std::path::Path,
    source: FileSource,
    filter: Option<&Expr>,
) -> (Pipeline, Collected) {
    let (registry, collected) = registry_with_collect();
    let p = Pipeline::new(name);
    p.registry(registry)
        .parallelism(parallelism)
        .checkpoint_dir(cp.to_str().unwrap());
    let mut rows = p
        .source(source)
        .event_time("date_time")
        .max_out_of_orderness(Duration::from_millis(100));
    if let Some(f) = filter {
        rows = rows.filter(f.clone());
    }
    rows.key_by(["auction"])
        .window(Window::tumbling(Duration::from_secs(10)))
        .aggregate([count_star().alias("n"), sum(col("price")).alias("total")])
        .sink(collect());
    (p, collected)
}

/// One large file read by several subtasks: split into ranges of whole lines
/// (`split-size`), it is read side by side at parallelism 3 and gives the windows of a
/// one-split read; a bad line in a later range is reported at its own line number; a
/// savepoint taken at 3 (its positions by range) goes on at 2, and the two runs together
/// fire every window once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_is_read_in_ranges_side_by_side_and_restores_by_range() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    let mut text = String::new();
    for i in 0..30_000u64 {
        if i == 20_000 {
            text.push_str("{not json\n");
            continue;
        }
        text.push_str(&format!(
            "{{\"auction\":{},\"price\":{i},\"date_time\":{}}}\n",
            i % 13,
            i * 10
        ));
    }
    std::fs::write(&input, &text).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let cp = dir.path().join("cp");
    let job = |parallelism: usize, split: Option<u64>, paced: bool, dead: &str| {
        let mut source = FileSource::json(&input).with_schema(Arc::clone(&schema));
        if let Some(bytes) = split {
            source = source.split_size(bytes);
        }
        if paced {
            source = source.rows_per_second(20_000.0);
        }
        let (p, collected) = bid_windows("ranges", parallelism, &cp, source, None);
        p.dead_letters(dir.path().join(dead));
        (p, collected)
    };
    let (whole, reference) = job(1, None, false, "dead-whole.jsonl");
    whole.run().await.unwrap();
    let expected = canonical(&reference.batches());
    assert_eq!(
        expected.len(),
        30 * 13,
        "every 10 s window with every auction"
    );

    let (split, got) = job(3, Some(64 << 10), false, "dead-split.jsonl");
    let handle = split.start().await.unwrap();
    let metrics = handle.metrics();
    handle.wait().await.unwrap();
    assert_eq!(metrics.late_records(), 0);
    assert!(canonical(&got.batches()) == expected, "split read differs");
    let dead = std::fs::read_to_string(dir.path().join("dead-split.jsonl")).unwrap();
    assert!(
        dead.contains(&format!("{}:20001", input.display())),
        "the bad line at its line: {dead}"
    );

    // Stopped with a savepoint at parallelism 3, resumed at 2.
    let first = job(3, Some(64 << 10), true, "dead-1.jsonl");
    let second = job(2, Some(64 << 10), false, "dead-2.jsonl");
    stopped_at_3_resumed_at_2(first, second, &expected, &format!("{}@", input.display())).await;
}

/// 30 000 bids (`auction` = id % 13, `price` = id, `date_time` = id × 10 ms) in row groups
/// of 2 000 rows: row group g holds the prices 2000·g to 2000·g + 1999.
fn write_bids_parquet(input: &std::path::Path) -> arrow::datatypes::SchemaRef {
    use arrow::array::{Int64Array, TimestampMillisecondArray};
    let schema = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bidder", DataType::Int64, true),
        Field::new("price", DataType::Int64, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    {
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(2_000))
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(input).unwrap(),
            Arc::clone(&schema),
            Some(props),
        )
        .unwrap();
        for chunk in 0..15i64 {
            let ids: Vec<i64> = (chunk * 2_000..(chunk + 1) * 2_000).collect();
            let b = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i % 13))),
                    Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i * 7))),
                    Arc::new(Int64Array::from_iter_values(ids.iter().copied())),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        ids.iter().map(|i| i * 10),
                    )),
                ],
            )
            .unwrap();
            w.write(&b).unwrap();
        }
        w.close().unwrap();
    }
    schema
}

/// A filter on a Parquet source's column skips the row groups whose statistics rule it
/// out: the same windows as a filter that cannot be pushed down, from fewer rows read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_on_a_parquet_source_skips_the_row_groups_it_rules_out() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.parquet");
    let schema = write_bids_parquet(&input);
    let cp = dir.path().join("cp");
    let pushed = col("price")
        .gt_eq(lit(7_000i64))
        .and(col("price").lt(lit(25_000i64)));
    // The same condition, not a comparison of the column with a literal: not pushed.
    let shifted = col("price") + lit(0i64);
    let kept = shifted
        .clone()
        .gt_eq(lit(7_000i64))
        .and(shifted.lt(lit(25_000i64)));
    let job = |parallelism: usize, filter: &Expr| {
        let source = FileSource::parquet(&input)
            .with_schema(Arc::clone(&schema))
            .split_size(1);
        bid_windows("pruned", parallelism, &cp, source, Some(filter))
    };
    let (all, reference) = job(1, &kept);
    let handle = all.start().await.unwrap();
    let metrics = handle.metrics();
    handle.wait().await.unwrap();
    assert_eq!(metrics.source_records(), 30_000, "every row group read");
    let expected = canonical(&reference.batches());
    assert_eq!(
        expected.len(),
        18 * 13,
        "18 windows of 10 s, each with every auction"
    );

    let (skipping, got) = job(3, &pushed);
    let handle = skipping.start().await.unwrap();
    let metrics = handle.metrics();
    handle.wait().await.unwrap();
    // Row groups 3 to 12 (prices 6 000 to 25 999) hold rows that pass.
    assert_eq!(
        metrics.source_records(),
        20_000,
        "only the row groups that can pass"
    );
    assert!(
        canonical(&got.batches()) == expected,
        "the pruned read differs"
    );
}

/// Runs `first` (paced) until it has read 10 000 rows, stops it with a savepoint whose
/// positions name splits by `split_marker`, resumes `second` from it: the windows of
/// both runs together are `expected`, each once.
async fn stopped_at_3_resumed_at_2(
    (first, before): (Pipeline, Collected),
    (second, after): (Pipeline, Collected),
    expected: &[String],
    split_marker: &str,
) {
    let handle = first.start().await.unwrap();
    let metrics = handle.metrics();
    let stop = handle.stop_handle();
    let waiting = std::time::Instant::now();
    while metrics.source_records() < 10_000 {
        assert!(
            waiting.elapsed() < Duration::from_secs(120),
            "never read 10 000 rows"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let savepoint = stop.savepoint(true).await.unwrap();
    handle.wait().await.unwrap();
    let manifest =
        std::fs::read_to_string(std::path::Path::new(&savepoint).join("_manifest.json")).unwrap();
    assert!(
        manifest.contains(split_marker),
        "positions by split: {manifest}"
    );
    second.restore_from(RestoreFrom::Path(savepoint));
    second.run().await.unwrap();
    let mut all = canonical(&before.batches());
    assert!(
        !all.is_empty() && all.len() < expected.len(),
        "stopped mid-way"
    );
    all.extend(canonical(&after.batches()));
    all.sort();
    assert_eq!(all.len(), expected.len(), "windows lost or fired twice");
    assert!(all == expected, "windows differ after the restore");
}

/// A Parquet file of many row groups read by several subtasks: split into runs of row
/// groups (`split-size`), read at parallelism 3 it gives the windows of a one-split read
/// (the `bidder` column, never used, is not decoded); a savepoint taken at 3 (positions by
/// run of row groups) goes on at 2, and the two runs together fire every window once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_file_is_read_by_row_groups_side_by_side_and_restores_by_them() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.parquet");
    let schema = write_bids_parquet(&input);
    let cp = dir.path().join("cp");
    let job = |parallelism: usize, split: Option<u64>, paced: bool| {
        let mut source = FileSource::parquet(&input).with_schema(Arc::clone(&schema));
        if let Some(bytes) = split {
            source = source.split_size(bytes);
        }
        if paced {
            source = source.rows_per_second(20_000.0);
        }
        bid_windows("row-groups", parallelism, &cp, source, None)
    };
    let (whole, reference) = job(1, None, false);
    whole.run().await.unwrap();
    let expected = canonical(&reference.batches());
    assert_eq!(
        expected.len(),
        30 * 13,
        "every 10 s window with every auction"
    );
    let sums: i64 = (0..30_000i64).sum();
    let total: i64 = reference
        .batches()
        .iter()
        .map(|b| {
            b.column_by_name("total")
                .unwrap()
                .as_primitive::<Int64Type>()
                .iter()
                .flatten()
                .sum::<i64>()
        })
        .sum();
    assert_eq!(total, sums, "every row read once");

    let (split, got) = job(3, Some(1), false);
    let handle = split.start().await.unwrap();
    let metrics = handle.metrics();
    handle.wait().await.unwrap();
    assert_eq!(metrics.late_records(), 0);
    assert!(canonical(&got.batches()) == expected, "split read differs");

    // Stopped with a savepoint at parallelism 3, resumed at 2.
    let first = job(3, Some(1), true);
    let second = job(2, Some(1), false);
    stopped_at_3_resumed_at_2(first, second, &expected, &format!("{}@rg", input.display())).await;
}
