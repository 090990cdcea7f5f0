//! Kafka end to end, against Apache Kafka: a single-node KRaft broker started by these
//! tests on free loopback ports (see `broker.rs`). Output of exactly-once jobs is read
//! the way any application reads it, by a `read_committed` consumer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::broker::{Broker, kafka};
use crate::support::{Kill, crash_and_restart, crash_and_restart_with, kill_delays, run_to_end};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A topic name no other test uses.
pub(crate) fn unique(stem: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{stem}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

pub(crate) async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let r = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    for x in r {
        x.unwrap();
    }
}

pub(crate) async fn delete_topics(bootstrap: &str, topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    // Clean-up only: a broker that cannot delete leaves them to its memory store.
    let _ = admin.delete_topics(topics, &AdminOptions::new()).await;
}

/// One message to produce: partition, key, payload, headers.
pub(crate) struct Msg {
    pub(crate) partition: i32,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: Vec<(&'static str, Vec<u8>)>,
}

impl Msg {
    /// A message of `text` alone, to partition 0.
    fn text(text: &str) -> Self {
        Msg {
            partition: 0,
            key: None,
            payload: text.as_bytes().to_vec(),
            headers: Vec::new(),
        }
    }
}

pub(crate) fn produce(bootstrap: &str, topic: &str, msgs: &[Msg]) {
    produce_with(bootstrap, topic, msgs, &[]);
}

/// [`produce`] with more producer properties.
fn produce_with(bootstrap: &str, topic: &str, msgs: &[Msg], props: &[(&str, &str)]) {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        // Small record batches: a consumer of several partitions gets them in turn (it
        // fetches whole batches), as it would from producers writing as events happen.
        .set("batch.size", "4096");
    for (k, v) in props {
        config.set(*k, *v);
    }
    let p: BaseProducer = config.create().unwrap();
    for m in msgs {
        let mut r = BaseRecord::<[u8], [u8]>::to(topic)
            .payload(&m.payload)
            .partition(m.partition);
        if let Some(k) = &m.key {
            r = r.key(k);
        }
        if !m.headers.is_empty() {
            let mut h = OwnedHeaders::new();
            for (k, v) in &m.headers {
                h = h.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            r = r.headers(h);
        }
        let mut r = r;
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// One message read back: headers, key and payload (`None`: a tombstone).
#[derive(Debug, Clone)]
pub(crate) struct Read {
    pub(crate) partition: i32,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) key: Option<String>,
    pub(crate) value: Option<String>,
    pub(crate) payload: String,
}

/// Everything committed in `topic` up to its current end, read as an application
/// would: a `read_committed` consumer, which never sees an aborted transaction's records.
pub(crate) fn read_topic(bootstrap: &str, topic: &str) -> Vec<Read> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("test-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut remaining: BTreeSet<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for &p in &remaining {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    while !remaining.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "reading {topic} timed out; partitions not at their end: {remaining:?}"
        );
        let m = match c.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                remaining.remove(&p);
                continue;
            }
            Some(m) => m.unwrap(),
        };
        let mut headers = BTreeMap::new();
        if let Some(h) = m.headers() {
            for x in h.iter() {
                headers.insert(
                    x.key.to_string(),
                    String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        out.push(Read {
            partition: m.partition(),
            headers,
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            value: m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
            payload: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
        });
    }
    out
}

/// Bid events as JSON: auction `i % 7`, price `i % 1000`, 200 events per second of
/// event time from 2024-01-01T00:00:00 (so 1 s windows hold 200; at most 12 000 events
/// an hour), spread over `partitions` partitions in order.
fn bids(n: usize, partitions: i32) -> Vec<Msg> {
    (0..n)
        .map(|i| Msg {
            partition: i as i32 % partitions,
            key: Some(format!("{}", i % 7).into_bytes()),
            payload: format!(
                "{{\"auction\":{},\"price\":{},\"ts\":\"2024-01-01T00:{:02}:{:02}.{:03}\"}}",
                i % 7,
                i % 1000,
                i / 200 / 60,
                (i / 200) % 60,
                (i % 200) * 5
            )
            .into_bytes(),
            headers: Vec::new(),
        })
        .collect()
}

/// The batch answer: (window end second, auction) → (bids, total price).
fn expected_windows(n: usize) -> BTreeMap<(i64, i64), (i64, i64)> {
    let mut m: BTreeMap<(i64, i64), (i64, i64)> = BTreeMap::new();
    for i in 0..n {
        let w = (i / 200) as i64 + 1;
        let e = m.entry((w, (i % 7) as i64)).or_default();
        e.0 += 1;
        e.1 += (i % 1000) as i64;
    }
    m
}

/// Windowed output rows as (window end second, auction, bids, total).
fn window_rows(reads: &[Read]) -> Vec<(i64, i64, i64, i64)> {
    reads
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.payload).unwrap();
            let end = v["window_end"].as_str().unwrap();
            // 2024-01-01T00:00:SS or 2024-01-01T00:01:00
            let secs =
                end[14..16].parse::<i64>().unwrap() * 60 + end[17..19].parse::<i64>().unwrap();
            (
                secs,
                v["auction"].as_i64().unwrap(),
                v["bids"].as_i64().unwrap(),
                v["total"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Every window of the batch answer over `n` bids, with its exact value; a window
/// written twice (a replay) has the same value both times.
fn assert_windows_exact(rows: &[(i64, i64, i64, i64)], n: usize) {
    let got: BTreeMap<(i64, i64), (i64, i64)> =
        rows.iter().map(|&(w, a, b, t)| ((w, a), (b, t))).collect();
    let want = expected_windows(n);
    let distinct: BTreeSet<_> = rows.iter().collect();
    if distinct.len() != got.len() {
        let mut by: BTreeMap<(i64, i64), Vec<(i64, i64)>> = BTreeMap::new();
        for &&(w, a, b, t) in &distinct {
            by.entry((w, a)).or_default().push((b, t));
        }
        let two: Vec<_> = by
            .iter()
            .filter(|(_, v)| v.len() > 1)
            .take(8)
            .map(|(k, v)| (k, v, want.get(k)))
            .collect();
        panic!("windows with two values (window, values, want): {two:?}");
    }
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(k) != Some(v))
        .take(5)
        .map(|(k, v)| (k, v, got.get(k)))
        .collect();
    assert!(
        wrong.is_empty() && got.len() == want.len(),
        "{} windows, {} expected; first differences (window, want, got): {wrong:?}",
        got.len(),
        want.len()
    );
}

fn windowed_sql(bootstrap: &str, input: &str, output: &str, rate: u32, sink: &str) -> String {
    format!(
        "CREATE TABLE bids (
            auction BIGINT, price BIGINT, ts TIMESTAMP(3),
            WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
         ) WITH ('connector' = 'kafka', 'topic' = '{input}',
            'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
            'properties.group.id' = 'g-{input}',
            -- Small fetches: a subtask reading two partitions gets rows of both in turn,
            -- so event time (the smaller of the two) advances while the input is paced.
            'properties.max.partition.fetch.bytes' = '8192',
            'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset',
            'rows-per-second' = '{rate}');
         CREATE TABLE counts (window_end TIMESTAMP(3), auction BIGINT, bids BIGINT, total BIGINT)
         WITH ('connector' = 'kafka', 'topic' = '{output}',
            'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json'{sink});
         INSERT INTO counts
         SELECT window_end, auction, COUNT(*) AS bids, SUM(price) AS total
         FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '1' SECOND))
         GROUP BY window_start, window_end, auction;"
    )
}

/// The sink of a [`windowed_job`].
enum Sink {
    AtLeastOnce,
    /// Transactional, with the transactional-id prefix `tx-<output topic>`.
    ExactlyOnce,
}

/// A windowed job over new topics: `input` holds `n` bids over 3 partitions, `output`
/// (2 partitions) is empty; `sql` (in `dir`) reads `input` at `rate` rows per second and
/// writes the 1 s windows to `output`.
struct WindowedJob {
    input: String,
    output: String,
    dir: tempfile::TempDir,
    sql: std::path::PathBuf,
}

async fn windowed_job(bootstrap: &str, n: usize, rate: u32, sink: Sink) -> WindowedJob {
    let (input, output) = (unique("bids"), unique("counts"));
    create_topic(bootstrap, &input, 3).await;
    create_topic(bootstrap, &output, 2).await;
    produce(bootstrap, &input, &bids(n, 3));
    let sink = match sink {
        Sink::AtLeastOnce => ", 'sink.delivery-guarantee' = 'at-least-once'".to_string(),
        Sink::ExactlyOnce => format!(
            ", 'sink.delivery-guarantee' = 'exactly-once', 'sink.transactional-id-prefix' = 'tx-{output}'"
        ),
    };
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("job.sql");
    std::fs::write(&sql, windowed_sql(bootstrap, &input, &output, rate, &sink)).unwrap();
    WindowedJob {
        input,
        output,
        dir,
        sql,
    }
}

/// Checkpoints every 100 ms into `cp`, an exactly-once job, resumed from the latest
/// checkpoint there (or from the beginning when there is none).
fn resume_args(cp: &Path) -> [String; 9] {
    [
        "--checkpoint-interval".into(),
        "100ms".into(),
        "--checkpoint-dir".into(),
        cp.display().to_string(),
        "--delivery".into(),
        "exactly-once".into(),
        "--from-checkpoint".into(),
        "latest".into(),
        "--fresh-if-none".into(),
    ]
}

fn sluice_run(sql: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("run")
        .arg(sql)
        .args(["--quiet", "-p", "2"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_sink_through_repeated_sigkill_loses_nothing() {
    let bootstrap = kafka();
    let n = 24_000;
    let WindowedJob {
        input,
        output,
        dir,
        sql,
    } = windowed_job(bootstrap, n, 12_000, Sink::AtLeastOnce).await;
    let cp = dir.path().join("checkpoints");
    let args = resume_args(&cp);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Aligned checkpoints (the job's default) with an at-least-once sink: after each
    // kill the sink may write again what it wrote since the last checkpoint.
    let kills = crash_and_restart(|| sluice_run(&sql, &args), &kill_delays(5, 300, 1_200), &cp);
    assert!(kills >= 3, "only {kills} kills hit a running job");

    // No loss: every window of the batch answer, with its exact value (a replayed
    // window may appear twice, always with the same value).
    assert_windows_exact(&window_rows(&read_topic(bootstrap, &output)), n);

    // The consumer group's committed offsets (what Kafka tools show) reached the end.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("g-{input}"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition(&input, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    assert_eq!(total, n as i64, "committed group offsets: {committed:?}");
    delete_topics(bootstrap, &[&input, &output]).await;
}

/// Kafka → 1 s tumbling aggregate → Kafka with the transactional sink, SIGKILLed again
/// and again at random moments (checkpoints every 100 ms, so kills land while a
/// checkpoint is taken, between its completion and the sink's commit, and after the
/// commit): a plain `read_committed` consumer sees every window exactly once with its
/// batch value, and nothing of an aborted transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_through_repeated_sigkill() {
    let bootstrap = kafka();
    let n = 36_000;
    let WindowedJob {
        input,
        output,
        dir,
        sql,
    } = windowed_job(bootstrap, n, 2_000, Sink::ExactlyOnce).await;
    let cp = dir.path().join("checkpoints");
    let args = resume_args(&cp);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Random moments, and every third kill the instant a checkpoint completes (before or
    // while the sink commits its transaction).
    let schedule: Vec<Kill> = kill_delays(24, 200, 1_500)
        .into_iter()
        .enumerate()
        .map(|(i, ms)| match i % 3 {
            2 => Kill::AtCheckpoint { max_ms: 1_500 },
            _ => Kill::After(ms),
        })
        .collect();
    let crashes = crash_and_restart_with(
        || {
            let mut c = sluice_run(&sql, &args);
            // The sink says when a restore commits a transaction again.
            c.env("RUST_LOG", "warn,sluice_connectors::kafka::sink=info");
            c
        },
        &schedule,
        &cp,
    );
    assert!(
        crashes.kills >= 20,
        "only {} kills hit a running job",
        crashes.kills
    );
    let again: usize = crashes
        .stderr
        .iter()
        .map(|e| e.matches("committing again a transaction").count())
        .sum();
    println!(
        "{} kills, {} runs resumed, {again} transactions committed again on restore",
        crashes.kills, crashes.resumed
    );

    // Exactly the batch answer: every window once, with its value.
    let rows = window_rows(&read_topic(bootstrap, &output));
    let got: BTreeMap<(i64, i64), (i64, i64)> =
        rows.iter().map(|&(w, a, b, t)| ((w, a), (b, t))).collect();
    assert_eq!(
        rows.len(),
        got.len(),
        "windows written twice in the committed output"
    );
    let want = expected_windows(n);
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(k) != Some(v))
        .take(5)
        .collect();
    assert!(
        wrong.is_empty() && got.len() == want.len(),
        "{} windows, {} expected; first differences: {wrong:?}",
        got.len(),
        want.len()
    );

    // A restart from the final checkpoint changes nothing.
    run_to_end(sluice_run(&sql, &args));
    assert_eq!(
        window_rows(&read_topic(bootstrap, &output)).len(),
        rows.len(),
        "the restarted job changed the committed output"
    );
    delete_topics(bootstrap, &[&input, &output]).await;
}

/// A producer left over from before a restore (a zombie), holding the transactional id
/// of the sink's subtask 0 with a transaction open, cannot commit once the job has
/// started again: the broker fences it (PRODUCER_FENCED), and its record never reaches a
/// `read_committed` consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_left_over_from_before_a_restore_is_fenced() {
    use rdkafka::types::RDKafkaErrorCode;
    let bootstrap = kafka();
    let n = 2_000;
    let WindowedJob {
        input,
        output,
        dir,
        sql,
    } = windowed_job(bootstrap, n, 100_000, Sink::ExactlyOnce).await;
    let prefix = format!("tx-{output}");
    let zombie: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Subtask 0 of 2 (`sluice_run` runs with -p 2).
        .set("transactional.id", format!("{prefix}-0-of-2"))
        .create()
        .unwrap();
    zombie.init_transactions(Duration::from_secs(30)).unwrap();
    zombie.begin_transaction().unwrap();
    zombie
        .send(BaseRecord::<[u8], [u8]>::to(&output).payload(b"{\"zombie\":true}"))
        .map_err(|(e, _)| e)
        .unwrap();
    zombie.flush(Duration::from_secs(30)).unwrap();

    let cp = dir.path().join("checkpoints");
    run_to_end(sluice_run(
        &sql,
        &[
            "--checkpoint-interval",
            "100ms",
            "--checkpoint-dir",
            cp.to_str().unwrap(),
            "--delivery",
            "exactly-once",
        ],
    ));

    let err = zombie
        .commit_transaction(Duration::from_secs(30))
        .expect_err("the zombie committed after the job had taken its transactional id");
    assert!(
        matches!(
            err.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            )
        ),
        "the zombie's commit failed otherwise than fenced: {err:?}"
    );
    let reads = read_topic(bootstrap, &output);
    assert!(
        reads.iter().all(|r| !r.payload.contains("zombie")),
        "a read_committed consumer saw the zombie's record"
    );
    assert_windows_exact(&window_rows(&reads), n);
    let rows = window_rows(&reads);
    assert_eq!(
        rows.len(),
        expected_windows(n).len(),
        "windows written twice"
    );
    delete_topics(bootstrap, &[&input, &output]).await;
}

/// The `csv` and `raw` formats over Kafka, both sink partitioners, and a source that
/// reads every topic matching `topic-pattern` (with the `topic` metadata column).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_raw_formats_partitioners_and_topic_patterns() {
    let bootstrap = kafka();
    let stem = unique("pat");
    let (one, two, raw) = (
        format!("{stem}-one"),
        format!("{stem}-two"),
        format!("{stem}-raw"),
    );
    for t in [&one, &two, &raw] {
        create_topic(bootstrap, t, 3).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines: String = (0..30)
        .map(|i| format!("{{\"id\": {i}, \"name\": \"n,{i}\"}}\n"))
        .collect();
    std::fs::write(&input, lines).unwrap();
    let source = format!(
        "CREATE TABLE src (id BIGINT, name STRING) WITH ('connector' = 'filesystem',
            'path' = '{}', 'format' = 'json');",
        input.display()
    );
    // Three writers: csv round-robin into `one`, csv by key into `two`, raw fixed.
    let write = |name: &str, sink: String| {
        let sql = dir.path().join(name);
        std::fs::write(&sql, format!("{source}\n{sink}")).unwrap();
        run_to_end(sluice_run(&sql, &[]));
    };
    write(
        "one.sql",
        format!(
            "CREATE TABLE o (id BIGINT, name STRING) WITH ('connector' = 'kafka', 'topic' = '{one}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'csv',
                'sink.partitioner' = 'round-robin');
             INSERT INTO o SELECT id, name FROM src;"
        ),
    );
    write(
        "two.sql",
        format!(
            "CREATE TABLE o (id BIGINT, name STRING) WITH ('connector' = 'kafka', 'topic' = '{two}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'csv',
                'key.fields' = 'id', 'key.format' = 'json');
             INSERT INTO o SELECT id, name FROM src;"
        ),
    );
    write(
        "raw.sql",
        format!(
            "CREATE TABLE o (name STRING) WITH ('connector' = 'kafka', 'topic' = '{raw}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'raw',
                'sink.partitioner' = 'fixed');
             INSERT INTO o SELECT name FROM src;"
        ),
    );
    let count_by_partition = |reads: &[Read]| {
        let mut n = [0usize; 3];
        for r in reads {
            n[r.partition as usize] += 1;
        }
        n
    };
    // Round-robin: every partition gets its share (each writing subtask cycles).
    let by = count_by_partition(&read_topic(bootstrap, &one));
    assert!(
        by.iter().all(|&c| (8..=12).contains(&c)),
        "round-robin spread {by:?}"
    );
    // By key: the same id always in the same partition, and the csv escapes the comma.
    let keyed = read_topic(bootstrap, &two);
    let mut seen: BTreeMap<String, i32> = BTreeMap::new();
    for r in &keyed {
        assert!(r.payload.contains("\"n,"), "{}", r.payload);
        let key = r.key.clone().unwrap();
        assert_eq!(*seen.entry(key).or_insert(r.partition), r.partition);
    }
    assert_eq!(seen.len(), 30);
    // Fixed: subtask i writes partition i mod 3; with two subtasks, partition 2 is empty.
    let raw_reads = read_topic(bootstrap, &raw);
    assert_eq!(count_by_partition(&raw_reads)[2], 0, "fixed partitioner");
    let mut names: Vec<String> = raw_reads.iter().map(|r| r.payload.clone()).collect();
    names.sort();
    let mut want: Vec<String> = (0..30).map(|i| format!("n,{i}")).collect();
    want.sort();
    assert_eq!(names, want, "raw values are the strings themselves");

    // Read back: both csv topics through one pattern, the raw one as text.
    let out = dir.path().join("out");
    let read = dir.path().join("read.sql");
    std::fs::write(
        &read,
        format!(
            "CREATE TABLE t (id BIGINT, name STRING, topic STRING METADATA VIRTUAL)
             WITH ('connector' = 'kafka', 'topic-pattern' = '{stem}-(one|two)',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'csv',
                'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset');
             CREATE TABLE r (name STRING) WITH ('connector' = 'kafka', 'topic' = '{raw}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'raw',
                'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset');
             CREATE TABLE o (id BIGINT, name STRING, topic STRING) WITH ('connector' = 'filesystem',
                'path' = '{}', 'format' = 'json');
             INSERT INTO o SELECT id, name, topic FROM t
             UNION ALL SELECT CAST(SUBSTRING(name FROM 3) AS BIGINT), name, 'raw' FROM r;",
            out.display()
        ),
    )
    .unwrap();
    run_to_end(sluice_run(&read, &[]));
    let mut got: Vec<(String, i64, String)> = Vec::new();
    for e in std::fs::read_dir(&out).unwrap() {
        for line in std::fs::read_to_string(e.unwrap().path()).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            got.push((
                v["topic"].as_str().unwrap().to_string(),
                v["id"].as_i64().unwrap(),
                v["name"].as_str().unwrap().to_string(),
            ));
        }
    }
    got.sort();
    let mut want: Vec<(String, i64, String)> = Vec::new();
    for t in [&one, &two] {
        want.extend((0..30).map(|i| (t.to_string(), i, format!("n,{i}"))));
    }
    want.extend((0..30).map(|i| ("raw".to_string(), i, format!("n,{i}"))));
    want.sort();
    assert_eq!(got, want);
    delete_topics(bootstrap, &[&one, &two, &raw]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_go_to_the_dead_letter_topic_and_metadata_columns_and_headers_pass_through()
 {
    let bootstrap = kafka();
    let (input, output, dlq) = (unique("raw"), unique("clean"), unique("dlq"));
    for t in [&input, &output, &dlq] {
        create_topic(bootstrap, t, 1).await;
    }
    let mut msgs = Vec::new();
    let mut bad_offsets = Vec::new();
    for i in 0..50 {
        let payload = if i % 10 == 3 {
            bad_offsets.push(i as i64);
            format!("{{\"id\": {i}, \"name\": oops").into_bytes()
        } else {
            format!("{{\"id\": {i}, \"name\": \"n{i}\"}}").into_bytes()
        };
        msgs.push(Msg {
            partition: 0,
            key: Some(format!("k{i}").into_bytes()),
            payload,
            headers: vec![("trace", format!("t{i}").into_bytes())],
        });
    }
    produce(bootstrap, &input, &msgs);
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("job.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE raw (
                id BIGINT, name STRING,
                k STRING METADATA FROM 'key' VIRTUAL,
                off BIGINT METADATA FROM 'offset' VIRTUAL,
                part INT METADATA FROM 'partition' VIRTUAL,
                hdrs MAP<STRING, BYTES> METADATA FROM 'headers' VIRTUAL
             ) WITH ('connector' = 'kafka', 'topic' = '{input}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
                'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset',
                'dead-letter.topic' = '{dlq}');
             CREATE TABLE clean (id BIGINT, name STRING, k STRING, off BIGINT, part INT,
                hdrs MAP<STRING, BYTES> METADATA FROM 'headers')
             WITH ('connector' = 'kafka', 'topic' = '{output}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
                'key.fields' = 'id', 'key.format' = 'json');
             INSERT INTO clean SELECT id, name, k, off, part, hdrs FROM raw;"
        ),
    )
    .unwrap();
    run_to_end(sluice_run(&sql, &[]));

    // Every good record, with its key, offset and partition.
    let out = read_topic(bootstrap, &output);
    let mut ids: Vec<i64> = Vec::new();
    for r in &out {
        let v: serde_json::Value = serde_json::from_str(&r.payload).unwrap();
        let id = v["id"].as_i64().unwrap();
        assert_eq!(v["k"], format!("k{id}"));
        assert_eq!(v["off"], id, "the offset of record {id}");
        assert_eq!(v["part"], 0);
        // Headers read from the input and written to the output.
        assert_eq!(r.headers.get("trace"), Some(&format!("t{id}")));
        ids.push(id);
    }
    ids.sort();
    let want: Vec<i64> = (0..50).filter(|i| i % 10 != 3).collect();
    assert_eq!(ids, want);

    // Every bad one in the dead-letter topic, with its position and the error.
    let dead = read_topic(bootstrap, &dlq);
    let mut offsets: Vec<i64> = dead
        .iter()
        .map(|d| d.headers["sluice.offset"].parse().unwrap())
        .collect();
    offsets.sort();
    assert_eq!(offsets, bad_offsets);
    for d in &dead {
        assert_eq!(d.headers["sluice.topic"], input);
        assert_eq!(d.headers["sluice.partition"], "0");
        assert!(
            d.headers["sluice.error"].contains("json"),
            "{:?}",
            d.headers
        );
        assert!(d.payload.contains("oops"));
    }
    delete_topics(bootstrap, &[&input, &output, &dlq]).await;
}

/// A schema registry speaking the two calls Sluice makes (register a subject's schema,
/// fetch a schema by id): no Confluent Schema Registry runs on this machine.
fn schema_registry() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut schemas: Vec<String> = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Head, then as much body as Content-Length says.
            loop {
                let n = std::io::Read::read(&mut s, &mut chunk).unwrap_or(0);
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len || n == 0 {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&buf).to_string();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let line = head.lines().next().unwrap_or("");
            let answer = if line.starts_with("POST /subjects/") {
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                let schema = v["schema"].as_str().unwrap().to_string();
                let id = match schemas.iter().position(|s| *s == schema) {
                    Some(i) => i + 1,
                    None => {
                        schemas.push(schema);
                        schemas.len()
                    }
                };
                Some(serde_json::json!({ "id": id }))
            } else if let Some(id) = line
                .strip_prefix("GET /schemas/ids/")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|i| i.parse::<usize>().ok())
            {
                schemas
                    .get(id.wrapping_sub(1))
                    .map(|s| serde_json::json!({ "schema": s }))
            } else {
                None
            };
            let (status, body) = match answer {
                Some(b) => ("200 OK", b.to_string()),
                None => ("404 Not Found", "{\"error_code\":40403}".to_string()),
            };
            let _ = std::io::Write::write_all(
                &mut s,
                format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_with_a_schema_registry_round_trips_through_kafka() {
    let bootstrap = kafka();
    let registry = schema_registry();
    let (avro, json, direct) = (unique("avro"), unique("json"), unique("direct"));
    for t in [&avro, &json, &direct] {
        create_topic(bootstrap, t, 1).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let write = dir.path().join("write.sql");
    std::fs::write(
        &write,
        format!(
            "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '2000');
             CREATE TABLE a (auction BIGINT, price BIGINT, channel STRING) WITH ('connector' = 'kafka',
                'topic' = '{avro}', 'properties.bootstrap.servers' = '{bootstrap}',
                'format' = 'avro-confluent', 'avro-confluent.url' = '{registry}');
             CREATE TABLE d (auction BIGINT, price BIGINT, channel STRING) WITH ('connector' = 'kafka',
                'topic' = '{direct}', 'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json');
             INSERT INTO a SELECT auction, price, channel FROM bid;
             INSERT INTO d SELECT auction, price, channel FROM bid;"
        ),
    )
    .unwrap();
    run_to_end(sluice_run(&write, &[]));
    let raw = read_topic(bootstrap, &avro);
    assert!(!raw.is_empty());
    let read = dir.path().join("read.sql");
    std::fs::write(
        &read,
        format!(
            "CREATE TABLE a (auction BIGINT, price BIGINT, channel STRING) WITH ('connector' = 'kafka',
                'topic' = '{avro}', 'properties.bootstrap.servers' = '{bootstrap}',
                'format' = 'avro-confluent', 'avro-confluent.url' = '{registry}',
                'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset');
             CREATE TABLE j (auction BIGINT, price BIGINT, channel STRING) WITH ('connector' = 'kafka',
                'topic' = '{json}', 'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json');
             INSERT INTO j SELECT * FROM a;"
        ),
    )
    .unwrap();
    run_to_end(sluice_run(&read, &[]));
    // What went through Avro and the registry equals what was written as JSON directly.
    let rows = |t: &str| {
        let mut v: Vec<String> = read_topic(bootstrap, t)
            .into_iter()
            .map(|r| r.payload)
            .collect();
        v.sort();
        v
    };
    let (through_avro, direct_rows) = (rows(&json), rows(&direct));
    assert_eq!(through_avro.len(), raw.len(), "every Avro record came back");
    assert_eq!(through_avro, direct_rows);
    delete_topics(bootstrap, &[&avro, &json, &direct]).await;
}

/// Rows a bounded read of `topic` with extra options delivers (JSON `{"id": n}`).
fn read_ids(bootstrap: &str, topic: &str, options: &str) -> Vec<i64> {
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("read.sql");
    let out = dir.path().join("out");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE t (id BIGINT) WITH ('connector' = 'kafka', 'topic' = '{topic}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
                'scan.bounded.mode' = 'latest-offset'{options});
             CREATE TABLE o (id BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');
             INSERT INTO o SELECT id FROM t;",
            out.display()
        ),
    )
    .unwrap();
    run_to_end(sluice_run(&sql, &[]));
    let mut ids = Vec::new();
    for e in std::fs::read_dir(&out).unwrap() {
        for line in std::fs::read_to_string(e.unwrap().path()).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            ids.push(v["id"].as_i64().unwrap());
        }
    }
    ids.sort();
    ids
}

pub(crate) fn id_msgs(range: std::ops::Range<i64>) -> Vec<Msg> {
    range
        .map(|i| Msg {
            partition: 0,
            key: None,
            payload: format!("{{\"id\": {i}}}").into_bytes(),
            headers: Vec::new(),
        })
        .collect()
}

/// Record batches compressed by a producer (each codec librdkafka writes here) are read
/// back whole, in order, and mixed with uncompressed ones; a sink asked to compress
/// writes what reads back the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_record_batches_are_read_back() {
    let bootstrap = kafka();
    let topic = unique("compressed");
    create_topic(bootstrap, &topic, 1).await;
    let codecs = ["gzip", "snappy", "lz4", "none"];
    for (k, codec) in codecs.iter().enumerate() {
        let from = k as i64 * 1_000;
        produce_with(
            bootstrap,
            &topic,
            &id_msgs(from..from + 1_000),
            &[("compression.type", codec)],
        );
    }
    let want: Vec<i64> = (0..4_000).collect();
    assert_eq!(
        read_ids(
            bootstrap,
            &topic,
            ", 'scan.startup.mode' = 'earliest-offset'"
        ),
        want
    );
    // A sink that compresses (through librdkafka), read back by a job.
    let copy = unique("compressed-copy");
    create_topic(bootstrap, &copy, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("copy.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE t (id BIGINT) WITH ('connector' = 'kafka', 'topic' = '{topic}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
                'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset');
             CREATE TABLE c (id BIGINT) WITH ('connector' = 'kafka', 'topic' = '{copy}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
                'properties.compression.type' = 'lz4');
             INSERT INTO c SELECT id FROM t;"
        ),
    )
    .unwrap();
    run_to_end(sluice_run(&sql, &[]));
    assert_eq!(
        read_ids(
            bootstrap,
            &copy,
            ", 'scan.startup.mode' = 'earliest-offset'"
        ),
        want
    );
    delete_topics(bootstrap, &[&topic, &copy]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_modes_and_group_offsets() {
    let bootstrap = kafka();
    let topic = unique("ids");
    create_topic(bootstrap, &topic, 1).await;
    produce(bootstrap, &topic, &id_msgs(0..5));
    std::thread::sleep(Duration::from_millis(50));
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    std::thread::sleep(Duration::from_millis(50));
    produce(bootstrap, &topic, &id_msgs(5..10));

    let all: Vec<i64> = (0..10).collect();
    let earliest = ", 'scan.startup.mode' = 'earliest-offset'";
    assert_eq!(read_ids(bootstrap, &topic, earliest), all);
    assert_eq!(
        read_ids(bootstrap, &topic, ", 'scan.startup.mode' = 'latest-offset'"),
        Vec::<i64>::new()
    );
    assert_eq!(
        read_ids(
            bootstrap,
            &topic,
            ", 'scan.startup.mode' = 'specific-offsets', 'scan.startup.specific-offsets' = 'partition:0,offset:7'"
        ),
        vec![7, 8, 9]
    );
    assert_eq!(
        read_ids(
            bootstrap,
            &topic,
            &format!(
                ", 'scan.startup.mode' = 'timestamp', 'scan.startup.timestamp-millis' = '{t}'"
            )
        ),
        (5..10).collect::<Vec<_>>()
    );
    // The group's offsets: a first run reads everything and commits; the next one
    // starts where it ended.
    let group = format!(", 'properties.group.id' = 'g-{topic}'");
    assert_eq!(read_ids(bootstrap, &topic, &group), all);
    produce(bootstrap, &topic, &id_msgs(10..13));
    assert_eq!(read_ids(bootstrap, &topic, &group), vec![10, 11, 12]);
    delete_topics(bootstrap, &[&topic]).await;
}

/// A topic written in transactions ends with a commit or abort marker, which is no
/// record: a bounded read still ends there, with the committed records alone (librdkafka
/// reads `read_committed` by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_read_of_a_transactional_topic_ends_with_the_committed_records() {
    let bootstrap = kafka();
    let topic = unique("txn-ids");
    create_topic(bootstrap, &topic, 2).await;
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", format!("writer-{topic}"))
        .create()
        .unwrap();
    p.init_transactions(Duration::from_secs(30)).unwrap();
    let write = |ids: std::ops::Range<i64>, commit: bool| {
        p.begin_transaction().unwrap();
        for i in ids {
            let payload = format!("{{\"id\": {i}}}");
            p.send(
                BaseRecord::<[u8], [u8]>::to(&topic)
                    .payload(payload.as_bytes())
                    .partition((i % 2) as i32),
            )
            .unwrap();
        }
        p.flush(Duration::from_secs(30)).unwrap();
        match commit {
            true => p.commit_transaction(Duration::from_secs(30)).unwrap(),
            false => p.abort_transaction(Duration::from_secs(30)).unwrap(),
        }
    };
    write(0..10, true);
    write(10..20, false);
    write(20..30, true);
    let ids = read_ids(
        bootstrap,
        &topic,
        ", 'scan.startup.mode' = 'earliest-offset'",
    );
    let want: Vec<i64> = (0..10).chain(20..30).collect();
    assert_eq!(ids, want);
    delete_topics(bootstrap, &[&topic]).await;
}

#[test]
fn the_kafka_latency_bench_sees_every_row() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "kafka",
            "--bootstrap",
            kafka(),
            "--query",
            "q0",
            "--events",
            "2000",
            "--rate",
            "2000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["rows"], 2000, "{r}");
    let (p50, p99) = (
        r["latency_p50_ms"].as_f64().unwrap(),
        r["latency_p99_ms"].as_f64().unwrap(),
    );
    // Every row crossed a broker twice: no latency is zero.
    assert!(p50 > 0.0 && p99 >= p50, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_consumes_finds_a_sluice_job_and_a_plain_consumer_group() {
    let bootstrap = kafka();
    let topic = unique("watched");
    create_topic(bootstrap, &topic, 2).await;
    let msgs: Vec<Msg> = id_msgs(0..100)
        .into_iter()
        .enumerate()
        .map(|(i, mut m)| {
            m.partition = (i % 2) as i32;
            m
        })
        .collect();
    produce(bootstrap, &topic, &msgs);
    // A Sluice job reads everything and commits under its group.
    let sluice_group = format!(
        ", 'properties.group.id' = 'sluice-{topic}', 'scan.startup.mode' = 'earliest-offset'"
    );
    assert_eq!(read_ids(bootstrap, &topic, &sluice_group).len(), 100);
    // A plain consumer group, live: one member subscribed to the topic (both partitions
    // assigned to it), which has committed offset 20 on partition 0 and nothing on 1.
    let plain = format!("plain-{topic}");
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &plain)
        .set("client.id", "plain-client")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[&topic]).unwrap();
    let start = Instant::now();
    while c.assignment().unwrap().count() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the plain consumer got no assignment"
        );
        let _ = c.poll(Duration::from_millis(100));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(20))
        .unwrap();
    c.commit(&tpl, rdkafka::consumer::CommitMode::Sync).unwrap();
    // It keeps polling (so it stays a member) until who-consumes has answered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = c.poll(Duration::from_millis(50));
            }
        })
    };

    let out = Command::new(BIN)
        .args(["who-consumes", &topic, "--bootstrap", bootstrap, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let groups: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |name: &str| {
        groups
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"] == name)
            .unwrap_or_else(|| panic!("no group {name} in {groups}"))
            .clone()
    };
    let s = find(&format!("sluice-{topic}"));
    assert_eq!(s["total_lag"], 0, "{s}");
    for p in s["partitions"].as_array().unwrap() {
        assert_eq!(p["committed"], 50, "{s}");
        assert_eq!(p["end"], 50, "{s}");
    }
    let p = find(&plain);
    assert_eq!(p["total_lag"], 30, "{p}");
    let parts = p["partitions"].as_array().unwrap();
    assert_eq!(
        (parts[0]["committed"].clone(), parts[0]["lag"].clone()),
        (20.into(), 30.into()),
        "{p}"
    );
    assert!(parts[1]["committed"].is_null(), "{p}");
    // The plain group's member as the broker knows it.
    let members = p["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{p}");
    assert_eq!(members[0]["client_id"], "plain-client", "{p}");
    assert!(
        members[0]["host"].as_str().unwrap().contains("127.0.0.1"),
        "{p}"
    );
    assert_eq!(members[0]["partitions"], serde_json::json!([0, 1]), "{p}");
    assert_eq!(p["state"], "Stable", "{p}");
    // The Sluice job assigned its partitions itself: its group has offsets, no members.
    assert!(s["members"].as_array().unwrap().is_empty(), "{s}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    poller.join().unwrap();
    delete_topics(bootstrap, &[&topic]).await;
}

/// `'scan.partition-assignment' = 'group'`: the subtasks join the consumer group and
/// read what it assigns them. The job (p = 2, exactly-once sink, checkpoints every
/// 100 ms) is SIGKILLed again and again, while a plain consumer keeps joining the same
/// group for a moment and leaving, so partitions move between the subtasks and away and
/// back all along: a `read_committed` consumer sees every record exactly once. Meanwhile
/// `who-consumes` shows the job's subtasks as the group's members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_group_assigns_partitions_through_kills_and_rebalances() {
    let bootstrap = kafka();
    let (input, output) = (unique("grouped"), unique("grouped-out"));
    create_topic(bootstrap, &input, 4).await;
    create_topic(bootstrap, &output, 2).await;
    let n: i64 = 16_000;
    let msgs: Vec<Msg> = id_msgs(0..n)
        .into_iter()
        .enumerate()
        .map(|(i, mut m)| {
            m.partition = (i % 4) as i32;
            m
        })
        .collect();
    produce(bootstrap, &input, &msgs);
    let group = format!("g-{input}");
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("job.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE ids (id BIGINT) WITH ('connector' = 'kafka', 'topic' = '{input}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
                'properties.group.id' = '{group}', 'scan.partition-assignment' = 'group',
                -- Members hear of a rebalance at their next heartbeat: often, so that
                -- partitions move quickly.
                'properties.heartbeat.interval.ms' = '100', 'properties.session.timeout.ms' = '6000',
                'properties.max.partition.fetch.bytes' = '4096',
                'scan.startup.mode' = 'earliest-offset', 'rows-per-second' = '1000');
             CREATE TABLE out_ids (id BIGINT) WITH ('connector' = 'kafka', 'topic' = '{output}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
                'sink.delivery-guarantee' = 'exactly-once',
                'sink.transactional-id-prefix' = 'tx-{output}');
             -- The input never ends (the group's assignment has no end): the job stops
             -- once every record has gone through.
             INSERT INTO out_ids SELECT id FROM ids LIMIT {n};"
        ),
    )
    .unwrap();
    let cp = dir.path().join("checkpoints");
    let args = resume_args(&cp);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // A plain member of the same group comes and goes: each time, the group takes
    // partitions from the job's subtasks and gives them back (maybe to the other one).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let intruder = {
        let (stop, bootstrap, input, group) = (
            std::sync::Arc::clone(&stop),
            bootstrap.to_string(),
            input.clone(),
            group.clone(),
        );
        std::thread::spawn(move || {
            let mut joined = 0;
            let mut members_seen = BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let c: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set("group.id", &group)
                    .set("client.id", "intruder")
                    .set("partition.assignment.strategy", "cooperative-sticky")
                    .set("heartbeat.interval.ms", "100")
                    // What it reads is not committed: the job's positions are its own.
                    .set("enable.auto.commit", "false")
                    .create()
                    .unwrap();
                c.subscribe(&[&input]).unwrap();
                // Long enough for a rebalance to finish on a loaded machine (a killed
                // subtask's static membership holds it up until the job is back).
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(3_000) {
                    let _ = c.poll(Duration::from_millis(50));
                }
                drop(c);
                joined += 1;
                // The job's subtasks as the broker knows them: static members named
                // after the job's subtasks, with the partitions they read.
                let out = Command::new(BIN)
                    .args(["who-consumes", &input, "--bootstrap", &bootstrap, "--json"])
                    .output()
                    .unwrap();
                if let Ok(groups) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                    for g in groups.as_array().into_iter().flatten() {
                        for m in g["members"].as_array().into_iter().flatten() {
                            let reads = m["partitions"].as_array().is_some_and(|p| !p.is_empty());
                            if g["group"] == group.as_str()
                                && m["client_id"]
                                    .as_str()
                                    .is_some_and(|c| c.starts_with("sluice-"))
                                && reads
                            {
                                members_seen.insert(m["client_id"].as_str().unwrap().to_string());
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(1_500));
            }
            (joined, members_seen)
        })
    };
    let crashes = crash_and_restart_with(
        || {
            let mut c = sluice_run(&sql, &args);
            // (INFO everywhere: events inside task spans are not shown when the filter
            // names targets.)
            c.env("RUST_LOG", "info");
            c
        },
        &kill_delays(4, 1_500, 4_000)
            .into_iter()
            .map(Kill::After)
            .collect::<Vec<_>>(),
        &cp,
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (joined, members_seen) = intruder.join().unwrap();
    assert!(
        !members_seen.is_empty(),
        "who-consumes never showed the job's subtasks as members of {group}"
    );
    assert!(
        crashes.kills >= 3,
        "only {} kills hit a running job",
        crashes.kills
    );
    let logs = crashes.stderr.join("\n");
    let moved = logs
        .matches("the consumer group took a partition away")
        .count();
    assert!(
        moved > 0 && logs.contains("reading a partition the consumer group assigned"),
        "no partition moved ({joined} joins of the intruder): {logs}"
    );

    let mut ids: Vec<i64> = read_topic(bootstrap, &output)
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.payload).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    ids.sort();
    let twice: Vec<i64> = ids
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .take(8)
        .collect();
    let want: Vec<i64> = (0..n).collect();
    assert!(
        twice.is_empty() && ids == want,
        "{} records, {n} expected; written twice: {twice:?}; {} partitions moved in {} runs",
        ids.len(),
        moved,
        crashes.stderr.len()
    );
    println!(
        "{} kills, {} runs resumed, {moved} partitions taken away, the intruder joined {joined} times, members seen: {members_seen:?}",
        crashes.kills, crashes.resumed
    );
    delete_topics(bootstrap, &[&input, &output]).await;
}

/// The broker is killed mid-run (SIGKILL, as a crash) and started again 4 s later on
/// its storage: the job rides it out through its restart strategy and the output is
/// complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_going_down_and_coming_back_loses_nothing() {
    // A broker of its own: the others' tests must not see it go.
    let broker = Broker::start_new();
    let bootstrap = broker.bootstrap.as_str();
    let n = 24_000;
    let WindowedJob {
        output, dir, sql, ..
    } = windowed_job(bootstrap, n, 8_000, Sink::AtLeastOnce).await;
    let cp = dir.path().join("checkpoints");
    let started = Instant::now();
    let mut job = sluice_run(
        &sql,
        &[
            "--checkpoint-interval",
            "200ms",
            "--checkpoint-dir",
            cp.to_str().unwrap(),
            // Aligned checkpoints with an at-least-once sink, as in the SIGKILL test:
            // unaligned (at-least-once) checkpoints may count a replayed row twice in
            // window state, so a window could come out with two values.
            "--delivery",
            "exactly-once",
            "--restart-attempts",
            "30",
            "--restart-delay",
            "500ms",
        ],
    )
    .spawn()
    .unwrap();
    // The broker goes away mid-run for 4 s, then comes back.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        job.try_wait().unwrap().is_none(),
        "the job ended before the broker went down: the outage would prove nothing"
    );
    broker.stop();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        job.try_wait().unwrap().is_none(),
        "the job ended while the broker was down"
    );
    broker.start();
    let mut err = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut err).unwrap();
    let status = job.wait().unwrap();
    assert!(
        status.success(),
        "the job did not survive the outage: {err}"
    );
    println!(
        "broker outage: job ran {:.1} s, {} restart(s)",
        started.elapsed().as_secs_f64(),
        err.matches("job failed; restarting").count()
    );
    // librdkafka reconnects by itself: the job rides the outage out without a restart
    // (as docs/checkpoints.md says).
    let restarts: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("job failed; restarting"))
        .collect();
    assert!(
        restarts.is_empty(),
        "the job restarted during the outage: {restarts:?}"
    );

    assert_windows_exact(&window_rows(&read_topic(bootstrap, &output)), n);
}

/// An updating query into an `upsert-kafka` table (`PRIMARY KEY (auction)`): each key's
/// last record is its current row, a tombstone deletes it; read back that way, the topic
/// equals the batch answer, and groups that stopped matching the `HAVING` were deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updating_query_into_upsert_kafka_leaves_the_batch_answer_by_key() {
    let bootstrap = kafka();
    let (input, output) = (unique("upsert-in"), unique("upsert-out"));
    let all = unique("upsert-all");
    create_topic(bootstrap, &input, 2).await;
    create_topic(bootstrap, &output, 3).await;
    create_topic(bootstrap, &all, 3).await;
    let n = 3_000;
    produce(bootstrap, &input, &bids(n, 2));
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("upsert.sql");
    std::fs::write(
        &sql,
        format!(
            "SET 'table.exec.mini-batch.size' = '50';
             CREATE TABLE bids (auction BIGINT, price BIGINT, ts TIMESTAMP(3))
             WITH ('connector' = 'kafka', 'topic' = '{input}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
                'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset');
             CREATE TABLE best (auction BIGINT, bids BIGINT, top BIGINT, PRIMARY KEY (auction) NOT ENFORCED)
             WITH ('connector' = 'upsert-kafka', 'topic' = '{output}',
                'properties.bootstrap.servers' = '{bootstrap}',
                'key.format' = 'json', 'value.format' = 'json');
             INSERT INTO best
             SELECT auction, COUNT(*), MAX(price) FROM bids GROUP BY auction HAVING MAX(price) < 997;
             -- Keyed like the aggregate, without a HAVING between: written as upserts (no -U).
             CREATE TABLE every (auction BIGINT, bids BIGINT, top BIGINT, PRIMARY KEY (auction) NOT ENFORCED)
             WITH ('connector' = 'upsert-kafka', 'topic' = '{all}',
                'properties.bootstrap.servers' = '{bootstrap}',
                'key.format' = 'json', 'value.format' = 'json');
             INSERT INTO every SELECT auction, COUNT(*), MAX(price) FROM bids GROUP BY auction;"
        ),
    )
    .unwrap();
    let out = sluice_run(&sql, &[]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Per key, in the order of its partition: the last value, or gone after a tombstone.
    let reads = read_topic(bootstrap, &output);
    let mut current: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let mut tombstones = 0;
    for r in &reads {
        let key: serde_json::Value = serde_json::from_str(r.key.as_deref().unwrap()).unwrap();
        let auction = key["auction"].as_i64().unwrap();
        match &r.value {
            None => {
                tombstones += 1;
                current.remove(&auction);
            }
            Some(v) => {
                let v: serde_json::Value = serde_json::from_str(v).unwrap();
                assert_eq!(v["auction"].as_i64(), Some(auction), "{v}");
                current.insert(
                    auction,
                    (v["bids"].as_i64().unwrap(), v["top"].as_i64().unwrap()),
                );
            }
        }
    }
    let mut expected: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for i in 0..n {
        let e = expected.entry((i % 7) as i64).or_insert((0, -1));
        e.0 += 1;
        e.1 = e.1.max((i % 1000) as i64);
    }
    expected.retain(|_, (_, top)| *top < 997);
    assert_eq!(current, expected, "{} records read", reads.len());
    // Small batches: every group is written long before its top price passes 997
    // (prices rise with the offset), so each group that stops matching is deleted once.
    let all_keys = 7;
    assert_eq!(
        tombstones,
        all_keys - expected.len(),
        "one tombstone per group that stopped matching"
    );
    // The upserts leave every group's final row, and no tombstone.
    let mut every: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for r in read_topic(bootstrap, &all) {
        let key: serde_json::Value = serde_json::from_str(r.key.as_deref().unwrap()).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(r.value.as_deref().expect("no tombstones")).unwrap();
        every.insert(
            key["auction"].as_i64().unwrap(),
            (v["bids"].as_i64().unwrap(), v["top"].as_i64().unwrap()),
        );
    }
    let mut all_groups: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for i in 0..n {
        let e = all_groups.entry((i % 7) as i64).or_insert((0, -1));
        e.0 += 1;
        e.1 = e.1.max((i % 1000) as i64);
    }
    assert_eq!(every, all_groups);
    // Read back as an upsert-kafka table, the topic is each key's current row: an
    // aggregate over it counts every key once (a replaced row is taken back, a tombstone
    // deletes), as Flink's ChangelogNormalize makes it.
    let read = dir.path().join("read.sql");
    std::fs::write(
        &read,
        format!(
            "CREATE TABLE best_in (auction BIGINT, bids BIGINT, top BIGINT, PRIMARY KEY (auction) NOT ENFORCED)
             WITH ('connector' = 'upsert-kafka', 'topic' = '{output}',
                'properties.bootstrap.servers' = '{bootstrap}',
                'key.format' = 'json', 'value.format' = 'json', 'scan.bounded.mode' = 'latest-offset');
             SELECT COUNT(*) AS n, SUM(bids) AS total, MAX(top) AS highest FROM best_in;"
        ),
    )
    .unwrap();
    let out = sluice_run(&read, &[])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("+I[") || l.starts_with("+U["))
        .unwrap_or_else(|| panic!("no result rows: {stdout}"));
    let want = format!(
        "[{}, {}, {}]",
        expected.len(),
        expected.values().map(|(b, _)| b).sum::<i64>(),
        expected.values().map(|(_, t)| t).max().unwrap()
    );
    // Without taking back replaced rows the count would be every record's (hundreds).
    assert!(last.ends_with(&want), "{last} is not {want}:\n{stdout}");
    delete_topics(bootstrap, &[&input, &output, &all]).await;
}

/// The shipped Kafka examples (`examples/kafka/`), as written but for the broker's
/// address, the topics' names and the input's size: the producer writes every bid, q0
/// reads them all back, and the windowed count writes one row per (window, auction) whose
/// counts add up to every bid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_kafka_examples_run() {
    let bootstrap = kafka();
    let (bids, counts) = (unique("example-bids"), unique("example-counts"));
    create_topic(bootstrap, &bids, 2).await;
    create_topic(bootstrap, &counts, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let example = |name: &str| {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples/kafka")
                .join(name),
        )
        .unwrap()
        .replace("127.0.0.1:19092", bootstrap)
        .replace("'topic' = 'bids2'", &format!("'topic' = '{bids}'"))
        .replace("'topic' = 'counts'", &format!("'topic' = '{counts}'"))
        .replace("'events.num' = '2000000'", "'events.num' = '20000'");
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = sluice_run(&path, &[]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{name}: {stderr}");
        stderr
    };
    let rows_in = |said: &str| -> u64 {
        said.split(" rows in, ")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no row count in: {said}"))
    };
    // 20 000 generated events hold 18 400 bids.
    assert_eq!(rows_in(&example("produce_bids.sql")), 18_400);
    assert_eq!(
        rows_in(&example("q0.sql")),
        18_400,
        "q0 reads every bid back"
    );
    example("windowed.sql");
    let total: i64 = read_topic(bootstrap, &counts)
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r.value.as_deref().unwrap()).unwrap();
            v["bids"].as_i64().unwrap()
        })
        .sum();
    assert_eq!(total, 18_400, "the window counts add up to every bid");
    delete_topics(bootstrap, &[&bids, &counts]).await;
}

/// `'json.fail-on-missing-field' = 'true'` fails the job at the first message that lacks a
/// field, with its position; without it the field reads as NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_a_field_fails_the_job_only_when_asked() {
    let bootstrap = kafka();
    let input = unique("missing-field");
    create_topic(bootstrap, &input, 1).await;
    let msgs: Vec<Msg> = [r#"{"a": 1, "b": "x"}"#, r#"{"a": 2}"#]
        .into_iter()
        .map(Msg::text)
        .collect();
    produce(bootstrap, &input, &msgs);
    let dir = tempfile::tempdir().unwrap();
    let script = |strict: bool| {
        let sql = dir.path().join(format!("missing-{strict}.sql"));
        std::fs::write(
            &sql,
            format!(
                "CREATE TABLE t (a BIGINT, b STRING)
                 WITH ('connector' = 'kafka', 'topic' = '{input}',
                    'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
                    'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset',
                    'json.fail-on-missing-field' = '{strict}');
                 SELECT a, b FROM t;"
            ),
        )
        .unwrap();
        sluice_run(&sql, &[])
            .stdout(Stdio::piped())
            .output()
            .unwrap()
    };
    let lenient = script(false);
    let stdout = String::from_utf8_lossy(&lenient.stdout);
    assert!(
        lenient.status.success(),
        "{}",
        String::from_utf8_lossy(&lenient.stderr)
    );
    assert!(stdout.contains("+I[2, null]"), "{stdout}");
    let strict = script(true);
    let stderr = String::from_utf8_lossy(&strict.stderr);
    assert!(!strict.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{input}/0@1: the record has no field `b`")),
        "{stderr}"
    );
    delete_topics(bootstrap, &[&input]).await;
}

/// An upsert sink keyed by a column several rows share (here a name two ids have): the
/// key shows the latest row still there, and a tombstone only once no row holds it (the
/// upsert materializer; written as they came, deleting id 1 would tombstone `ann` while
/// id 2 still has that name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upsert_sink_keyed_by_a_shared_column_keeps_the_latest_row_left() {
    let bootstrap = kafka();
    let (input, output) = (unique("shared-in"), unique("shared-out"));
    create_topic(bootstrap, &input, 1).await;
    create_topic(bootstrap, &output, 1).await;
    let change = |op: &str, before: Option<(i64, &str, i64)>, after: Option<(i64, &str, i64)>| {
        let row = |r: Option<(i64, &str, i64)>| match r {
            Some((id, name, score)) => {
                format!(r#"{{"id": {id}, "name": "{name}", "score": {score}}}"#)
            }
            None => "null".into(),
        };
        Msg::text(&format!(
            r#"{{"before": {}, "after": {}, "op": "{op}"}}"#,
            row(before),
            row(after)
        ))
    };
    produce(
        bootstrap,
        &input,
        &[
            change("c", None, Some((1, "ann", 10))),
            change("c", None, Some((2, "ann", 20))),
            change("c", None, Some((3, "bob", 30))),
            // ann: the newer row goes, the older comes back; then id 1 leaves too, and
            // id 4 takes the name.
            change("d", Some((2, "ann", 20)), None),
            change("u", Some((1, "ann", 10)), Some((1, "ann", 11))),
            change("c", None, Some((4, "ann", 40))),
            change("d", Some((1, "ann", 11)), None),
            // bob: its only row leaves.
            change("d", Some((3, "bob", 30)), None),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("shared.sql");
    std::fs::write(
        &sql,
        format!(
            "SET 'table.exec.mini-batch.size' = '1';
             CREATE TABLE customers (id BIGINT, name STRING, score BIGINT)
             WITH ('connector' = 'kafka', 'topic' = '{input}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'debezium-json',
                'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset');
             CREATE TABLE by_name (name STRING, id BIGINT, score BIGINT, PRIMARY KEY (name) NOT ENFORCED)
             WITH ('connector' = 'upsert-kafka', 'topic' = '{output}',
                'properties.bootstrap.servers' = '{bootstrap}',
                'key.format' = 'json', 'value.format' = 'json');
             INSERT INTO by_name SELECT name, id, score FROM customers;"
        ),
    )
    .unwrap();
    let out = sluice_run(&sql, &[]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut history: Vec<String> = Vec::new();
    let mut current: BTreeMap<String, String> = BTreeMap::new();
    for r in read_topic(bootstrap, &output) {
        let key: serde_json::Value = serde_json::from_str(r.key.as_deref().unwrap()).unwrap();
        let name = key["name"].as_str().unwrap().to_string();
        match r.value {
            None => {
                history.push(format!("{name} -"));
                current.remove(&name);
            }
            Some(v) => {
                let v: serde_json::Value = serde_json::from_str(&v).unwrap();
                history.push(format!("{name} {} {}", v["id"], v["score"]));
                current.insert(name, format!("{} {}", v["id"], v["score"]));
            }
        }
    }
    assert_eq!(
        current.into_iter().collect::<Vec<_>>(),
        vec![("ann".to_string(), "4 40".to_string())],
        "{history:?}"
    );
    assert!(
        !history.iter().any(|h| h == "ann -"),
        "ann was never without a row: {history:?}"
    );
    delete_topics(bootstrap, &[&input, &output]).await;
}

/// A `debezium-json` Kafka topic is a changelog (`c`/`r` `+I`, `u` `-U`/`+U`, `d` `-D`):
/// filtered and written to `upsert-kafka`, it leaves exactly the rows that still match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debezium_topic_is_read_as_a_changelog() {
    let bootstrap = kafka();
    let (input, output) = (unique("cdc-in"), unique("cdc-out"));
    create_topic(bootstrap, &input, 1).await;
    create_topic(bootstrap, &output, 1).await;
    let changes = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sql/changes.jsonl"),
    )
    .unwrap();
    let msgs: Vec<Msg> = changes.lines().map(Msg::text).collect();
    produce(bootstrap, &input, &msgs);
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("cdc.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE customers (id BIGINT, name STRING, score BIGINT)
             WITH ('connector' = 'kafka', 'topic' = '{input}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'debezium-json',
                'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset');
             CREATE TABLE good (id BIGINT, name STRING, score BIGINT, PRIMARY KEY (id) NOT ENFORCED)
             WITH ('connector' = 'upsert-kafka', 'topic' = '{output}',
                'properties.bootstrap.servers' = '{bootstrap}',
                'key.format' = 'json', 'value.format' = 'json');
             INSERT INTO good SELECT id, name, score FROM customers WHERE score > 6;"
        ),
    )
    .unwrap();
    let out = sluice_run(&sql, &[]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut current: BTreeMap<i64, String> = BTreeMap::new();
    for r in read_topic(bootstrap, &output) {
        let key: serde_json::Value = serde_json::from_str(r.key.as_deref().unwrap()).unwrap();
        let id = key["id"].as_i64().unwrap();
        match r.value {
            None => {
                current.remove(&id);
            }
            Some(v) => {
                let v: serde_json::Value = serde_json::from_str(&v).unwrap();
                current.insert(id, format!("{} {}", v["name"], v["score"]));
            }
        }
    }
    // ann 10 -> 15 stays; bob is deleted; cid 30 -> 5 stops matching.
    assert_eq!(
        current.into_iter().collect::<Vec<_>>(),
        vec![(1, "\"ann\" 15".to_string())]
    );
    delete_topics(bootstrap, &[&input, &output]).await;
}
