//! "Why is it slow?" on real jobs: each situation is built for real on a server (a sink
//! whose reader is slow, a skewed key, an idle Kafka partition, state kept forever) and
//! the diagnosis must rank its cause first.

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::server::{Server, start_server, start_server_piped};

fn submit(server: &Server, sql: &str, parallelism: usize) -> u64 {
    let (status, v) = server.call(
        "POST",
        "/api/jobs",
        Some(&json!({ "sql": sql, "parallelism": parallelism }).to_string()),
    );
    assert_eq!(status, 201, "{v}");
    v["id"].as_u64().unwrap()
}

/// Polls the diagnosis until its top cause is `kind`; returns it (the whole diagnosis
/// in the failure message otherwise).
fn top_cause(server: &Server, id: u64, kind: &str) -> Value {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < Duration::from_secs(90) {
        let (status, v) = server.call("GET", &format!("/api/jobs/{id}/diagnosis"), None);
        assert_eq!(status, 200, "{v}");
        if v["causes"][0]["kind"] == kind {
            return v;
        }
        last = v;
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("the diagnosis never ranked `{kind}` first: {last:#}");
}

#[test]
fn a_sink_whose_reader_is_slow_is_diagnosed_as_a_slow_sink() {
    let (mut server, _dir) = start_server_piped(&[]);
    // The print sink writes to the server's output, which this test drains slowly: the
    // sink waits on it, as on any external system that cannot keep up.
    let mut out = server.stdout();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while out.read(&mut buf).is_ok_and(|n| n > 0) {
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let id = submit(
        &server,
        "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'rate-limit' = '20000');
CREATE TABLE out (auction BIGINT, bidder BIGINT, price BIGINT) WITH ('connector' = 'print');
INSERT INTO out SELECT auction, bidder, price FROM bid;",
        1,
    );
    let d = top_cause(&server, id, "slow_sink");
    let c = &d["causes"][0];
    assert!(c["title"].as_str().unwrap().contains("sink"), "{d:#}");
    assert!(
        c["operator_name"].as_str().unwrap().contains("out"),
        "{d:#}"
    );
    // The CLI prints the same, ranked.
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["diagnose", &id.to_string(), "--server", &server.url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("1. [slow_sink"), "{text}");
    assert!(text.contains("do: "), "{text}");
}

#[test]
fn a_skewed_key_is_diagnosed_as_skew() {
    let (server, _dir) = start_server(&[]);
    // Nine bids in ten have key 1: one of the two window subtasks gets them.
    let id = submit(
        &server,
        "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'rate-limit' = '20000');
CREATE TABLE out (k BIGINT, n BIGINT) WITH ('connector' = 'blackhole');
CREATE VIEW keyed AS SELECT CASE WHEN price % 10 = 7 THEN auction ELSE 1 END AS k, date_time FROM bid;
INSERT INTO out SELECT k, COUNT(*) FROM TABLE(TUMBLE(TABLE keyed, DESCRIPTOR(date_time), INTERVAL '1' SECOND))
GROUP BY k, window_start, window_end;",
        2,
    );
    let d = top_cause(&server, id, "skew");
    let c = &d["causes"][0];
    assert!(c["action"].as_str().unwrap().contains("hot key"), "{d:#}");
    assert!(
        c["operator_name"].as_str().unwrap().contains("window"),
        "{d:#}"
    );
}

#[test]
fn state_kept_forever_while_memory_grows_is_diagnosed_as_state_growth() {
    let (server, _dir) = start_server(&[]);
    // A running count per (bidder, auction), no state TTL: every new pair is kept.
    let id = submit(
        &server,
        "SET 'execution.checkpointing.interval' = '1s';
CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'rate-limit' = '50000');
CREATE TABLE out (bidder BIGINT, auction BIGINT, n BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO out SELECT bidder, auction, COUNT(*) FROM bid GROUP BY bidder, auction;",
        1,
    );
    let d = top_cause(&server, id, "state_growth");
    let c = &d["causes"][0];
    assert!(
        c["action"]
            .as_str()
            .unwrap()
            .contains("table.exec.state.ttl"),
        "{d:#}"
    );
    assert!(c["evidence"][0].as_str().unwrap().contains("MiB"), "{d:#}");
    // The drill-down shows the aggregate's state size from the latest checkpoint.
    let aggregate = c["operator"].as_u64().unwrap();
    let start = Instant::now();
    loop {
        let (_, op) = server.call(
            "GET",
            &format!("/api/jobs/{id}/operators/{aggregate}"),
            None,
        );
        if op["subtasks"][0]["state_bytes"]
            .as_u64()
            .is_some_and(|b| b > 0)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no state size after checkpoints: {op:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kafka_partition_is_diagnosed_as_holding_the_watermark() {
    let bootstrap = crate::broker::kafka();
    let topic = crate::kafka::unique("idle-partition");
    crate::kafka::create_topic(bootstrap, &topic, 2).await;
    let (server, _dir) = start_server(&[]);
    // Rows to partition 0 only, as they happen: partition 1 stays idle.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (stop, topic, bootstrap) = (
            std::sync::Arc::clone(&stop),
            topic.clone(),
            bootstrap.to_string(),
        );
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let msgs: Vec<crate::kafka::Msg> = (0..50)
                    .map(|_| {
                        i += 1;
                        crate::kafka::Msg {
                            partition: 0,
                            key: None,
                            payload: format!(
                                "{{\"k\": {}, \"ts_ms\": {}}}",
                                i % 7,
                                sluice_types::now_micros() / 1000
                            )
                            .into_bytes(),
                            headers: Vec::new(),
                        }
                    })
                    .collect();
                crate::kafka::produce(&bootstrap, &topic, &msgs);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let id = submit(
        &server,
        &format!(
            "CREATE TABLE events (k BIGINT, ts_ms BIGINT, ts AS TO_TIMESTAMP_LTZ(ts_ms, 3),
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
WITH ('connector' = 'kafka', 'topic' = '{topic}', 'properties.bootstrap.servers' = '{bootstrap}',
      'scan.startup.mode' = 'earliest-offset', 'format' = 'json');
CREATE TABLE out (k BIGINT, n BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO out SELECT k, COUNT(*) FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(ts), INTERVAL '1' SECOND))
GROUP BY k, window_start, window_end;"
        ),
        2,
    );
    let d = top_cause(&server, id, "watermark");
    // The drill-down shows each subtask's splits: partition 0 with its own watermark on
    // subtask 0; nothing yet on subtask 1.
    let (_, detail) = server.call("GET", &format!("/api/jobs/{id}"), None);
    let source = detail["operators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["is_source"] == true)
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let (_, op) = server.call("GET", &format!("/api/jobs/{id}/operators/{source}"), None);
    let subtasks = op["subtasks"].as_array().unwrap();
    let split = &subtasks[0]["splits"][0];
    assert_eq!(split["name"], format!("{topic}-0"), "{op:#}");
    assert!(split["watermark_ms"].as_i64().is_some(), "{op:#}");
    assert!(
        subtasks[1]["splits"].as_array().unwrap().is_empty(),
        "{op:#}"
    );
    assert!(
        d["causes"][0]["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains("none of its splits")),
        "{d:#}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.join().unwrap();
    let c = &d["causes"][0];
    assert!(c["title"].as_str().unwrap().contains("subtask 1"), "{d:#}");
    assert!(
        c["action"].as_str().unwrap().contains("idle-timeout"),
        "{d:#}"
    );
}
