//! `sluice bench kafka`: end-to-end latency and throughput through a Kafka broker.
//!
//! Latency (the default):
//!
//! ```text
//!  producer thread ──(paced JSON bids, date_time = now)──> topic …-in
//!        job (this process): Kafka source → query → Kafka sink ──> topic …-out
//!  consumer thread <──────────────────────────────────────────────── topic …-out
//!  latency of a row = when the consumer got it − when its event was produced (q0),
//!                     or − its window's end (window: 1 s tumbling count per auction)
//! ```
//!
//! Throughput (`--throughput`): a first job writes `events` Nexmark events' bids into
//! topic …-in (not measured); then the measured job reads them all (JSON or Avro),
//! and writes every row to topic …-out in the same format: records per second and per
//! CPU-second of this process, which holds only the job then.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use sluice_types::{Result, SluiceError};

/// What `sluice bench kafka --throughput` measured.
#[derive(Clone, Debug, Serialize)]
pub struct KafkaThroughputReport {
    /// `json` or `avro`, in and out.
    pub format: String,
    /// Records the job read (and wrote).
    pub records: u64,
    /// Parallelism of every operator.
    pub parallelism: usize,
    /// Wall-clock seconds of the measured job.
    pub wall_s: f64,
    /// CPU seconds (user + system) of the process during the measured job.
    pub cpu_s: f64,
    /// Records per wall-clock second.
    pub records_per_sec: f64,
    /// Records per CPU-second.
    pub records_per_cpu_sec: f64,
    /// Peak resident memory of the process (MiB).
    pub peak_rss_mb: f64,
}

/// What `sluice bench kafka` measured.
#[derive(Clone, Debug, Serialize)]
pub struct KafkaBenchReport {
    /// `q0` or `window`.
    pub query: String,
    /// Events produced.
    pub events: u64,
    /// Output rows the consumer received while the input was flowing.
    pub rows: u64,
    /// Events per second the producer offered.
    pub rate: u64,
    /// Events per second the job kept up with (events / time to the last output row).
    pub events_per_sec: f64,
    /// End-to-end latency through the broker, median, ms.
    pub latency_p50_ms: f64,
    /// End-to-end latency through the broker, 99th percentile, ms.
    pub latency_p99_ms: f64,
    /// Largest latency seen, ms.
    pub latency_max_ms: f64,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn err(what: &str) -> impl FnOnce(rdkafka::error::KafkaError) -> SluiceError + '_ {
    move |e| SluiceError::external(what.to_string()).with_source(e)
}

/// The bench's topics, new ones named after now, 2 partitions each; with `mock`,
/// librdkafka's mock cluster in this process (kept alive by the returned handle).
async fn bench_topics(
    bootstrap: &str,
) -> Result<(
    String,
    String,
    String,
    Option<rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
)> {
    let stamp = now_us();
    let (input, output) = (
        format!("sluice-bench-{stamp}-in"),
        format!("sluice-bench-{stamp}-out"),
    );
    if bootstrap == "mock" {
        let m =
            rdkafka::mocking::MockCluster::new(1).map_err(err("cannot start the mock cluster"))?;
        for t in [&input, &output] {
            m.create_topic(t, 2, 1)
                .map_err(err("cannot create the bench topics"))?;
        }
        return Ok((m.bootstrap_servers(), input, output, Some(m)));
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(err("cannot create a Kafka admin client"))?;
    let created = admin
        .create_topics(
            &[
                NewTopic::new(&input, 2, TopicReplication::Fixed(1)),
                NewTopic::new(&output, 2, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new(),
        )
        .await
        .map_err(err("cannot create the bench topics"))?;
    for r in created {
        r.map_err(|(t, e)| SluiceError::external(format!("cannot create topic {t}: {e}")))?;
    }
    Ok((bootstrap.to_string(), input, output, None))
}

/// Plans `script` at `parallelism` and starts it.
async fn start_job(script: &str, parallelism: usize) -> Result<sluice::runtime::JobHandle> {
    let p = parallelism.to_string();
    let plan = sluice::plan_sql(script, &[("parallelism.default", &p)])?
        .plan
        .ok_or_else(|| SluiceError::internal("the bench script has no INSERT"))?;
    sluice::Pipeline::from_plan(plan).start().await
}

/// Reads `events` Nexmark events' bids from a topic in `format` (`json` or `avro`) and
/// writes them all to another: records per second and per CPU-second.
pub async fn run_kafka_throughput(
    bootstrap: &str,
    format: &str,
    events: u64,
    parallelism: usize,
) -> Result<KafkaThroughputReport> {
    if !matches!(format, "json" | "avro") {
        return Err(SluiceError::user(format!(
            "no Kafka bench format `{format}`; use json or avro"
        )));
    }
    let (bootstrap, input, output, _mock) = bench_topics(bootstrap).await?;
    let columns = "auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, date_time TIMESTAMP(3), extra STRING";
    let kafka = |topic: &str, extra: &str| {
        format!(
            "'connector' = 'kafka', 'topic' = '{topic}', 'properties.bootstrap.servers' = '{bootstrap}', 'format' = '{format}'{extra}"
        )
    };
    // The input, written by a job of its own (not measured).
    let fill = format!(
        "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '{events}');
         CREATE TABLE kin ({columns}) WITH ({});
         INSERT INTO kin SELECT auction, bidder, price, channel, url, date_time, extra FROM bid;",
        kafka(&input, ", 'sink.delivery-guarantee' = 'at-least-once'")
    );
    start_job(&fill, parallelism).await?.wait().await?;
    let copy = format!(
        "CREATE TABLE kin ({columns}) WITH ({});
         CREATE TABLE kout ({columns}) WITH ({});
         INSERT INTO kout SELECT * FROM kin;",
        kafka(
            &input,
            ", 'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset'"
        ),
        kafka(&output, ", 'sink.delivery-guarantee' = 'at-least-once'"),
    );
    let cpu0 = crate::bench::cpu_seconds();
    let t0 = Instant::now();
    let handle = start_job(&copy, parallelism).await?;
    let metrics = handle.metrics();
    handle.wait().await?;
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = crate::bench::cpu_seconds() - cpu0;
    let records = metrics.sink_records();
    Ok(KafkaThroughputReport {
        format: format.to_string(),
        records,
        parallelism,
        wall_s,
        cpu_s,
        records_per_sec: records as f64 / wall_s.max(1e-9),
        records_per_cpu_sec: records as f64 / cpu_s.max(1e-9),
        peak_rss_mb: crate::bench::peak_rss_mb(),
    })
}

/// Runs `query` (`q0` or `window`) over `events` events produced at `rate` per second,
/// against the broker at `bootstrap`, or `mock` for librdkafka's mock cluster.
pub async fn run_kafka_bench(
    bootstrap: &str,
    query: &str,
    events: u64,
    rate: u64,
    parallelism: usize,
) -> Result<KafkaBenchReport> {
    let (bootstrap, input, output, _mock) = bench_topics(bootstrap).await?;
    let bootstrap = bootstrap.as_str();
    let source = format!(
        "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3), sent_us BIGINT,
            WATERMARK FOR date_time AS date_time - INTERVAL '0' SECOND)
         WITH ('connector' = 'kafka', 'topic' = '{input}', 'properties.bootstrap.servers' = '{bootstrap}',
            'format' = 'json', 'scan.startup.mode' = 'earliest-offset',
            'properties.fetch.wait.max.ms' = '5');"
    );
    let (sink_cols, select) = match query {
        "q0" => (
            "auction BIGINT, price BIGINT, t BIGINT",
            "SELECT auction, price, sent_us AS t FROM bids",
        ),
        "window" => (
            "auction BIGINT, bids BIGINT, t BIGINT",
            "SELECT auction, COUNT(*) AS bids, CAST(window_end AS BIGINT) * 1000 AS t
             FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '1' SECOND))
             GROUP BY window_start, window_end, auction",
        ),
        other => {
            return Err(SluiceError::user(format!(
                "no Kafka bench query `{other}`; use q0 or window"
            )));
        }
    };
    let script = format!(
        "{source}
         CREATE TABLE out ({sink_cols}) WITH ('connector' = 'kafka', 'topic' = '{output}',
            'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
            'sink.delivery-guarantee' = 'at-least-once', 'properties.linger.ms' = '1');
         INSERT INTO out {select};"
    );
    let handle = start_job(&script, parallelism).await?;
    let stop = handle.stop_handle();

    // The consumer: every output row's latency until told to stop.
    let done = Arc::new(AtomicBool::new(false));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{output}-reader"))
        .set("fetch.wait.max.ms", "5")
        .create()
        .map_err(err("cannot create the bench consumer"))?;
    let mut tpl = TopicPartitionList::new();
    // The topic was created above, so it starts at offset 0 (asked for by number: a
    // broker's "earliest" need not be exact while several producers write).
    for p in 0..2 {
        tpl.add_partition_offset(&output, p, Offset::Offset(0))
            .map_err(err("bad partition"))?;
    }
    consumer.assign(&tpl).map_err(err("cannot assign"))?;
    let reader = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut lat: Vec<i64> = Vec::new();
            let mut last = Instant::now();
            while !done.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) else {
                    continue;
                };
                let now = now_us();
                last = Instant::now();
                let t = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                    .and_then(|v| v["t"].as_i64());
                if let Some(t) = t {
                    lat.push(now - t);
                }
            }
            (lat, last)
        })
    };

    // The producer: events at `rate` per second, event time = now.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "1")
        .create()
        .map_err(err("cannot create the bench producer"))?;
    // The job opens its consumers and producers first: start-up is not latency.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let start = Instant::now();
    let writer = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut payload = String::new();
        for i in 0..events {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                producer.poll(Duration::ZERO);
                std::thread::sleep(wait);
            }
            payload.clear();
            let now = now_us();
            payload.push_str(&format!(
                "{{\"auction\":{},\"price\":{},\"date_time\":{},\"sent_us\":{now}}}",
                i % 10,
                i % 1000,
                now / 1000
            ));
            let mut rec = BaseRecord::<(), str>::to(&input)
                .payload(payload.as_str())
                .partition((i % 2) as i32);
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        rec = back;
                        producer.poll(Duration::from_millis(1));
                    }
                }
            }
        }
        producer
            .flush(Duration::from_secs(30))
            .map_err(err("cannot flush the bench producer"))
    });
    writer
        .await
        .map_err(|e| SluiceError::internal(e.to_string()))??;
    // Let the last rows through, then stop the job.
    tokio::time::sleep(Duration::from_secs(3)).await;
    done.store(true, Ordering::Relaxed);
    let (mut lat, last) = reader
        .join()
        .map_err(|_| SluiceError::internal("the bench consumer panicked"))?;
    stop.stop().await;
    handle.wait().await?;
    lat.sort_unstable();
    let q = |f: f64| -> f64 {
        match lat.len() {
            0 => 0.0,
            n => lat[((n - 1) as f64 * f).round() as usize] as f64,
        }
    };
    let span = last.duration_since(start).as_secs_f64().max(1e-9);
    Ok(KafkaBenchReport {
        query: query.to_string(),
        events,
        rows: lat.len() as u64,
        rate,
        events_per_sec: events as f64 / span,
        latency_p50_ms: q(0.5) / 1000.0,
        latency_p99_ms: q(0.99) / 1000.0,
        latency_max_ms: q(1.0) / 1000.0,
    })
}
