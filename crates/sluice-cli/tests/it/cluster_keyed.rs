//! Jobs with keyed state as instances of a cluster: event time through a topic between
//! jobs (watermark records), a windowed job split at its keyed exchange into a front
//! and partition tasks, killed, joined, cut off the network and restored from S3; a
//! join of two topics and a job with two keyed exchanges.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::kafka;
use crate::cluster::{ASSIGNED, Instance, log_time, now_of_day, ps_cluster};
use crate::kafka::{BIN, create_topic, delete_topics, produce, read_topic, unique};

/// `1970-01-01 HH:MM:SS.mmm`, as the JSON format writes a TIMESTAMP(3) of `ms`.
fn day_time(ms: i64) -> String {
    let s = ms / 1000;
    format!(
        "1970-01-01 {:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

/// Event time crosses a Kafka topic between two jobs: the first writes its watermark
/// into every partition of the topic it writes (`sink.watermark-records`, in its
/// transactions), the second reads each partition's watermark as the least of its
/// writers' (`scan.watermark-records`), not from the rows, whose writers interleave
/// them out of order. Its windows close while the first job still runs, and they
/// equal the batch GROUP BY of the input: no row was late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_cross_a_topic_from_one_job_to_the_next() {
    let bootstrap = kafka();
    let (input, mid, output) = (unique("wm-in"), unique("wm-mid"), unique("wm-out"));
    create_topic(bootstrap, &input, 2).await;
    create_topic(bootstrap, &mid, 3).await;
    create_topic(bootstrap, &output, 1).await;
    // Each input partition in event-time order; 20 ms of event time per event.
    let want = events_input(bootstrap, &input, 6_000, (2, 7, 20), false);
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sql");
    std::fs::write(
        &a,
        format!(
            "CREATE TABLE src (k BIGINT, v BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
             WITH ('connector' = 'kafka', 'topic' = '{input}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
                'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset',
                'rows-per-second' = '1000');
             CREATE TABLE mid (k BIGINT, v BIGINT, ts TIMESTAMP(3)) WITH ('connector' = 'kafka',
                'topic' = '{mid}', 'properties.bootstrap.servers' = '{bootstrap}',
                'format' = 'json', 'key.fields' = 'k', 'key.format' = 'json',
                'sink.watermark-records' = 'true');
             INSERT INTO mid SELECT k, v, ts FROM src;"
        ),
    )
    .unwrap();
    let b = dir.path().join("b.sql");
    std::fs::write(
        &b,
        format!(
            "CREATE TABLE mid (k BIGINT, v BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
             WITH ('connector' = 'kafka', 'topic' = '{mid}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
                'scan.startup.mode' = 'earliest-offset', 'scan.watermark-records' = 'true');
             CREATE TABLE out (k BIGINT, window_start TIMESTAMP(3), n BIGINT, total BIGINT)
             WITH ('connector' = 'kafka', 'topic' = '{output}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json');
             INSERT INTO out SELECT k, window_start, COUNT(*) AS n, SUM(v) AS total
             FROM TABLE(TUMBLE(TABLE mid, DESCRIPTOR(ts), INTERVAL '1' SECOND))
             GROUP BY k, window_start, window_end;"
        ),
    )
    .unwrap();
    let bind = format!("127.0.0.1:{}", crate::broker::free_port());
    let run = |sql: &Path, p: &str, log: &str, extra: &[&str]| {
        Command::new(BIN)
            .arg("run")
            .arg(sql)
            .args(extra)
            .args(["--quiet", "-p", p, "--checkpoint-interval", "200ms"])
            .args(["--delivery", "exactly-once", "--checkpoint-dir"])
            .arg(dir.path().join(format!("{log}-checkpoints")))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join(log)).unwrap())
            .spawn()
            .unwrap()
    };
    let log = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let mut second = run(&b, "1", "b.log", &["--metrics-bind", &bind]);
    let mut first = run(&a, "2", "a.log", &[]);
    // Rows that reached the second job's sink: windows it closed.
    let closed = || -> f64 {
        let Ok((_, text)) = sluice::connectors::http::HttpUrl::parse(&format!("http://{bind}"))
            .unwrap()
            .request("GET", "/metrics", None, &[])
        else {
            return 0.0;
        };
        text.lines()
            .filter(|l| {
                l.starts_with("sluice_records_in_total") && l.contains("operator=\"sink out\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // Windows close while the first job still writes: its watermarks came through.
    let start = Instant::now();
    let mut early = 0;
    let done = loop {
        if let Some(status) = first.try_wait().unwrap() {
            break status;
        }
        // Some windows, not all yet.
        let seen = closed() as usize;
        if seen < want.len() {
            early = early.max(seen);
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the first job did not end in 120 s:\n{}",
            log("a.log")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(done.success(), "the first job failed:\n{}", log("a.log"));
    assert!(
        early > 0,
        "no window closed while the first job ran:\n{}\n--- a:\n{}",
        log("b.log"),
        log("a.log")
    );
    let start = Instant::now();
    let got = loop {
        let got = committed_windows(bootstrap, &output);
        if got.len() >= want.len() || start.elapsed() > Duration::from_secs(60) {
            break got;
        }
        assert!(
            second.try_wait().unwrap().is_none(),
            "the second job ended:\n{}",
            log("b.log")
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = second.kill();
    let _ = second.wait();
    let wrong = wrong_windows(&want, &got);
    assert!(
        wrong.is_empty() && got.len() == want.len(),
        "{} windows, {} expected ({early} before the first job ended); first wrong: {wrong:?}; first got: {:?}\n{}",
        got.len(),
        want.len(),
        got.iter().next(),
        log("b.log")
    );
    delete_topics(bootstrap, &[&input, &mid, &output]).await;
}

/// Windows by key and start (seconds since midnight): `(count, sum)`.
type Windows = std::collections::BTreeMap<(i64, i64), (i64, i64)>;

/// Windows as committed to an output topic: every `(count, sum)` written for each.
type Committed = std::collections::BTreeMap<(i64, i64), Vec<(i64, i64)>>;

/// `n` events over the `partitions` partitions of `input` (event `i` in partition
/// `i % partitions`, key `i % keys`, value `i`, event time `i * step_ms`: each partition
/// in event-time order), then, if `closing`, one event per partition an hour later that
/// closes every window; the batch GROUP BY of the events into one-second windows.
fn events_input(
    bootstrap: &str,
    input: &str,
    n: i64,
    shape: (i64, i64, i64),
    closing: bool,
) -> Windows {
    events_input_from(bootstrap, input, n, shape, closing, 0)
}

/// As [`events_input`], the events in partitions `first..partitions` only (those
/// before hold nothing but the closing event).
fn events_input_from(
    bootstrap: &str,
    input: &str,
    n: i64,
    (partitions, keys, step_ms): (i64, i64, i64),
    closing: bool,
    first: i64,
) -> Windows {
    let event = |i: i64| (i % keys, i, i * step_ms);
    let mut msgs: Vec<crate::kafka::Msg> = (0..n)
        .map(|i| {
            let (k, v, ts) = event(i);
            crate::kafka::Msg {
                partition: (first + i % (partitions - first)) as i32,
                key: None,
                payload: format!(r#"{{"k": {k}, "v": {v}, "ts": "{}"}}"#, day_time(ts))
                    .into_bytes(),
                headers: Vec::new(),
            }
        })
        .collect();
    for p in (0..partitions).filter(|_| closing) {
        msgs.push(crate::kafka::Msg {
            partition: p as i32,
            key: None,
            payload: format!(
                r#"{{"k": -1, "v": 0, "ts": "{}"}}"#,
                day_time(n * step_ms + 3_600_000)
            )
            .into_bytes(),
            headers: Vec::new(),
        });
    }
    produce(bootstrap, input, &msgs);
    let mut want = Windows::new();
    for i in 0..n {
        let (k, v, ts) = event(i);
        let w = want.entry((k, ts / 1000)).or_default();
        w.0 += 1;
        w.1 += v;
    }
    want
}

/// The windows committed to `output` by key and start, each with every `(n, total)`
/// written for it.
fn committed_windows(bootstrap: &str, output: &str) -> Committed {
    let mut windows = Committed::new();
    for r in read_topic(bootstrap, output) {
        let v: serde_json::Value = serde_json::from_str(&r.payload).unwrap();
        let start = v["window_start"].as_str().unwrap();
        let start = log_time(&format!("{start}Z")).unwrap() as i64;
        windows
            .entry((v["k"].as_i64().unwrap(), start))
            .or_default()
            .push((v["n"].as_i64().unwrap(), v["total"].as_i64().unwrap()));
    }
    windows
}

/// The first few windows of `want` that `got` does not have exactly once, with what it
/// has for them.
fn wrong_windows(want: &Windows, got: &Committed) -> Vec<String> {
    want.iter()
        .filter(|(k, v)| got.get(*k) != Some(&vec![**v]))
        .map(|(k, v)| format!("{k:?}: want {v:?}, got {:?}", got.get(k)))
        .take(5)
        .collect()
}

/// Waits (at most 60 s) until `instance`'s partition tasks have completed `n`
/// checkpoints together (each one followed by its commit).
fn wait_for_task_checkpoints(instance: &mut Instance, n: usize) {
    let start = Instant::now();
    let done = |log: String| {
        log.lines()
            .filter(|l| l.contains("checkpoint complete job=") && l.contains("-back-p"))
            .count()
    };
    while done(instance.log()) < n {
        instance.assert_running();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the partition tasks of {} took {n} checkpoints in 60 s:\n{}",
            instance.name,
            instance.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One-second tumbling windows per key, from `input` into `output`.
fn windowed_job(dir: &Path, bootstrap: &str, input: &str, output: &str) -> std::path::PathBuf {
    let sql = dir.join("windows.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE events (k BIGINT, v BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
             WITH ('connector' = 'kafka', 'topic' = '{input}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
                'scan.startup.mode' = 'earliest-offset', 'rows-per-second' = '2000',
                'properties.heartbeat.interval.ms' = '100',
                'properties.session.timeout.ms' = '6000',
                'properties.max.partition.fetch.bytes' = '4096');
             CREATE TABLE out (k BIGINT, window_start TIMESTAMP(3), n BIGINT, total BIGINT)
             WITH ('connector' = 'kafka', 'topic' = '{output}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json');
             INSERT INTO out SELECT k, window_start, COUNT(*) AS n, SUM(v) AS total
             FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(ts), INTERVAL '1' SECOND))
             GROUP BY k, window_start, window_end;"
        ),
    )
    .unwrap();
    sql
}

/// Waits (the instances running all along) until `output` has as many windows as
/// `want`, then checks that each is there once and equals the batch answer; returns the
/// instances' logs.
fn assert_windows(
    bootstrap: &str,
    output: &str,
    want: &Windows,
    instances: &mut [Instance],
) -> Vec<String> {
    let start = Instant::now();
    let read = || committed_windows(bootstrap, output);
    loop {
        for i in instances.iter_mut() {
            i.assert_running();
        }
        if read().len() >= want.len() || start.elapsed() > Duration::from_secs(180) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // A moment later too: nothing is committed twice late.
    std::thread::sleep(Duration::from_secs(2));
    let windows = read();
    let logs: Vec<String> = instances
        .iter()
        .map(|i| format!("--- {}:\n{}", i.name, i.log()))
        .collect();
    let wrong = wrong_windows(want, &windows);
    assert!(
        wrong.is_empty() && windows.len() == want.len(),
        "{} windows, {} expected; first wrong: {wrong:?}\n{}",
        windows.len(),
        want.len(),
        logs.join("\n")
    );
    logs
}

/// A windowed job (one-second tumbling windows per key) as instances of one cluster:
/// each instance runs the front of the job (source to repartition topic) and the keyed
/// part for the repartition topic's partitions the group gives it, each with its state
/// checkpointed per partition. One instance is SIGKILLed mid-run and its partitions,
/// state included, are taken over; another joins. The read_committed output has every
/// window once, equal to the batch GROUP BY of the input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_windows_across_instances_survive_a_kill_with_their_state() {
    let bootstrap = kafka();
    let (input, output) = (unique("keyed-in"), unique("keyed-out"));
    create_topic(bootstrap, &input, 4).await;
    create_topic(bootstrap, &output, 2).await;
    let want = events_input(bootstrap, &input, 24_000, (4, 13, 10), true);
    let dir = tempfile::tempdir().unwrap();
    let sql = windowed_job(dir.path(), bootstrap, &input, &output);
    let cluster = unique("k");
    let bind = format!("127.0.0.1:{}", crate::broker::free_port());
    let mut instances = vec![Instance::start_with(
        &sql,
        &cluster,
        "a",
        dir.path(),
        &["--metrics-bind", &bind],
    )];
    instances[0].wait_for(ASSIGNED);
    // Its metrics endpoint serves the front and every partition task it runs, each as
    // a job of its own.
    let start = Instant::now();
    loop {
        let (status, text) = sluice::connectors::http::HttpUrl::parse(&format!("http://{bind}"))
            .unwrap()
            .request("GET", "/metrics", None, &[])
            .unwrap();
        assert_eq!(status, 200, "{text}");
        if text.contains("job_name=\"windows-front\"") && text.contains("job_name=\"windows-back-p")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the front and the partition tasks are not in the metrics:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Others join once a's tasks have committed (what moves to them is restored).
    wait_for_task_checkpoints(&mut instances[0], 8);
    // Once rows reach them, a's tasks hold open windows: their commits say how much.
    let start = Instant::now();
    loop {
        let r = ps_cluster(&cluster, bootstrap);
        if r["instances"][0]["state_bytes"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the instance's keyed tasks show no state: {r}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for name in ["b", "c"] {
        instances.push(Instance::start(&sql, &cluster, name, dir.path()));
    }
    instances[1].wait_for(ASSIGNED);
    wait_for_task_checkpoints(&mut instances[1], 4);
    instances.remove(1).kill();
    let killed_at = now_of_day();
    std::thread::sleep(Duration::from_millis(1_500));
    instances.push(Instance::start(&sql, &cluster, "d", dir.path()));
    let logs = assert_windows(bootstrap, &output, &want, &mut instances);
    // How long the killed instance's tasks were down: until a survivor restored one
    // from b's checkpoints (the session timeout is 6 s), and how long reading it took.
    let restored = logs
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| l.contains("restoring from") && l.contains("/b-"))
        .filter_map(|l| {
            Some((
                log_time(l)?,
                l.split("read_ms=").nth(1)?.split(' ').next()?.to_string(),
            ))
        })
        .filter(|(t, _)| *t > killed_at)
        .min_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((t, read_ms)) = restored {
        println!(
            "keyed takeover after SIGKILL: {:.1} s (a partition's state restored, read in {read_ms} ms)",
            t - killed_at
        );
    }
    // The killed instance's partitions went on from its committed state elsewhere.
    assert!(
        logs.iter()
            .any(|l| l.contains("restoring a partition's state from the checkpoint")),
        "no partition task restored state:\n{}",
        logs.join("\n")
    );
    // `ps --cluster` shows which instance runs which partition's keyed task.
    let r = ps_cluster(&cluster, bootstrap);
    let mut tasks: Vec<String> = Vec::new();
    for i in r["instances"].as_array().into_iter().flatten() {
        assert!(
            ["a", "c", "d"].contains(&i["instance"].as_str().unwrap_or_default()),
            "{r}"
        );
        for t in i["tasks"].as_array().into_iter().flatten() {
            tasks.push(t.as_str().unwrap_or_default().to_string());
        }
    }
    tasks.sort();
    assert_eq!(
        tasks.len(),
        4,
        "every partition of the repartition topic has one task: {r}"
    );
    // What their commits say: the partition each instance took last with how long that
    // partition stood still. b's partitions waited for its session to time out (6 s)
    // before a survivor took them; whoever took them last shows that pause.
    let instances_seen = r["instances"].as_array().cloned().unwrap_or_default();
    for i in &instances_seen {
        assert!(
            i["last_rebalance"]["at_ms"].as_i64().is_some(),
            "an instance shows no last rebalance: {r}"
        );
    }
    let pauses: Vec<u64> = instances_seen
        .iter()
        .filter_map(|i| i["last_rebalance"]["pause_ms"].as_u64())
        .collect();
    println!("last rebalance pauses per instance (ms): {pauses:?}");
    assert!(
        pauses.iter().any(|&p| p >= 3_000),
        "no instance shows the pause of taking the killed instance's partitions: {r}"
    );
    // Each partition keeps the checkpoints of its current task (and of the one it
    // restored), not those of every task it ever had.
    let partitions = dir.path().join("checkpoints").join(&cluster);
    for p in std::fs::read_dir(&partitions).unwrap() {
        let p = p.unwrap().path();
        if !p.file_name().unwrap().to_string_lossy().starts_with('p') {
            continue;
        }
        let runs_with_checkpoints = std::fs::read_dir(&p)
            .unwrap()
            .filter(|run| {
                let run = run.as_ref().unwrap().path();
                std::fs::read_dir(&run).is_ok_and(|mut cps| {
                    cps.any(|c| c.unwrap().path().join("_manifest.json").exists())
                })
            })
            .count();
        assert!(
            (1..=2).contains(&runs_with_checkpoints),
            "{} runs keep checkpoints in {}",
            runs_with_checkpoints,
            p.display()
        );
    }
    for i in instances {
        i.kill();
    }
    delete_topics(bootstrap, &[&input, &output]).await;
}

/// The windowed job on two instances in network namespaces of their own: one is cut off
/// past its session timeout, the other takes its front partitions and its partition
/// tasks over (restoring their committed state, and fencing the cut-off tasks'
/// transactional ids); when the link comes back the cut-off instance cannot commit,
/// and the output has every window once, equal to the batch answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_instance_cut_off_the_network_is_fenced_and_its_state_taken_over() {
    let net = crate::cluster::Net::new(2);
    let broker = crate::broker::Broker::start_on(crate::cluster::Net::HUB);
    let bootstrap = broker.bootstrap.as_str();
    let (input, output) = (unique("keyed-netns-in"), unique("keyed-netns-out"));
    create_topic(bootstrap, &input, 4).await;
    create_topic(bootstrap, &output, 2).await;
    let want = events_input(bootstrap, &input, 24_000, (4, 13, 10), true);
    let dir = tempfile::tempdir().unwrap();
    let sql = windowed_job(dir.path(), bootstrap, &input, &output);
    let cluster = unique("k");
    let mut instances: Vec<Instance> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            Instance::start_in(Some(&net.namespaces[i]), &sql, &cluster, name, dir.path())
        })
        .collect();
    for i in &mut instances {
        i.wait_for(ASSIGNED);
    }
    // Cut once both instances' partition tasks have committed a few checkpoints.
    for i in instances.iter_mut() {
        wait_for_task_checkpoints(i, 5);
    }
    net.link(0, false);
    std::thread::sleep(Duration::from_millis(8_500));
    net.link(0, true);
    let logs = assert_windows(bootstrap, &output, &want, &mut instances);
    // b restored the state of partitions a had run.
    assert!(
        logs[1].contains("restoring a partition's state from the checkpoint")
            && logs[1].contains("/a-"),
        "b restored no state of a's tasks:\n{}",
        logs[1]
    );
    for i in instances {
        i.kill();
    }
    delete_topics(bootstrap, &[&input, &output]).await;
    drop(broker);
    drop(net);
}

/// SIGTERM stops a keyed instance: its front commits what it read, its partition tasks
/// stop at their last commit, and it exits at once. Started again, it restores every
/// partition's state from its last checkpoint and the output is exact. The checkpoints
/// go through an S3 API (moto's server): what the second run restores, it reads back
/// from object storage. One source partition holds only the closing event: its
/// watermark went into the repartition topic before the stop and is never written
/// again, so the restored tasks must know it from their checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_instance_stopped_with_sigterm_goes_on_from_its_state_in_s3() {
    let bootstrap = kafka();
    let (input, output) = (unique("keyed-term-in"), unique("keyed-term-out"));
    create_topic(bootstrap, &input, 4).await;
    create_topic(bootstrap, &output, 2).await;
    let want = events_input_from(bootstrap, &input, 16_000, (4, 13, 10), true, 1);
    let dir = tempfile::tempdir().unwrap();
    let sql = windowed_job(dir.path(), bootstrap, &input, &output);
    let cluster = unique("k");
    let s3 = sluice_testkit::moto::Moto::start("sluice-state");
    let state = ["--checkpoint-dir", "s3://sluice-state/jobs"];
    let mut a = Instance::start_env(&sql, &cluster, "a", dir.path(), &state, &s3.env());
    a.wait_for(ASSIGNED);
    wait_for_task_checkpoints(&mut a, 12);
    a.signal("-TERM");
    let status = a.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", a.log());
    // Every partition's task checkpointed into the bucket.
    let keys = s3.keys(&format!("jobs/{cluster}/"));
    for p in 0..4 {
        assert!(
            keys.iter()
                .any(|k| k.starts_with(&format!("jobs/{cluster}/p{p}/"))
                    && k.ends_with("/_manifest.json")),
            "no checkpoint of partition {p} in the bucket: {keys:?}"
        );
    }
    // Started again under another name: the stopped instance's static members leave the
    // group when their session times out. (Restarted under the same name, its front's
    // second subtask sometimes got no partitions back, one run in five: not understood
    // yet.)
    let mut again = vec![Instance::start_env(
        &sql,
        &cluster,
        "a2",
        dir.path(),
        &state,
        &s3.env(),
    )];
    let logs = assert_windows(bootstrap, &output, &want, &mut again);
    assert!(
        logs[0].contains("restoring a partition's state from the checkpoint")
            && logs[0].contains("s3://sluice-state/jobs/"),
        "the second run restored no state from the bucket:\n{}",
        logs[0]
    );
    for i in again {
        i.kill();
    }
    delete_topics(bootstrap, &[&input, &output]).await;
}

/// An updating stream crosses the repartition topic with its rows' kinds: a Debezium
/// changelog (inserts, updates, deletes) summed per key by two instances, one of them
/// SIGKILLed mid-run. The output changelog, materialized by key, equals the batch
/// GROUP BY of the changelog's final rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updating_aggregate_across_instances_materializes_to_the_batch_answer() {
    let bootstrap = kafka();
    let (input, output) = (unique("keyed-cdc-in"), unique("keyed-cdc-out"));
    create_topic(bootstrap, &input, 4).await;
    create_topic(bootstrap, &output, 2).await;
    // Row `id` (key `id % 7`, value `id`) is inserted; every third is then updated
    // (value + 1000), every fifth deleted; a row's changes stay in one partition.
    let n: i64 = 12_000;
    let row = |id: i64, v: i64| format!(r#"{{"id": {id}, "k": {}, "v": {v}}}"#, id % 7);
    let mut msgs = Vec::new();
    let mut live = std::collections::BTreeMap::<i64, i64>::new();
    let mut change = |id: i64, json: String| {
        msgs.push(crate::kafka::Msg {
            partition: (id % 4) as i32,
            key: None,
            payload: json.into_bytes(),
            headers: Vec::new(),
        })
    };
    for id in 0..n {
        change(
            id,
            format!(r#"{{"before": null, "after": {}, "op": "c"}}"#, row(id, id)),
        );
        live.insert(id, id);
    }
    for id in (0..n).filter(|id| id % 3 == 0) {
        change(
            id,
            format!(
                r#"{{"before": {}, "after": {}, "op": "u"}}"#,
                row(id, id),
                row(id, id + 1000)
            ),
        );
        live.insert(id, id + 1000);
    }
    for id in (0..n).filter(|id| id % 5 == 0) {
        let v = live.remove(&id).unwrap();
        change(
            id,
            format!(r#"{{"before": {}, "after": null, "op": "d"}}"#, row(id, v)),
        );
    }
    produce(bootstrap, &input, &msgs);
    let mut want = std::collections::BTreeMap::<i64, (i64, i64)>::new();
    for (id, v) in &live {
        let w = want.entry(id % 7).or_default();
        w.0 += v;
        w.1 += 1;
    }
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("sums.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE changes (id BIGINT, k BIGINT, v BIGINT)
             WITH ('connector' = 'kafka', 'topic' = '{input}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'debezium-json',
                'scan.startup.mode' = 'earliest-offset', 'rows-per-second' = '3000',
                'properties.heartbeat.interval.ms' = '100',
                'properties.session.timeout.ms' = '6000',
                'properties.max.partition.fetch.bytes' = '4096');
             CREATE TABLE sums (k BIGINT, total BIGINT, n BIGINT)
             WITH ('connector' = 'kafka', 'topic' = '{output}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'debezium-json',
                'key.fields' = 'k', 'key.format' = 'json');
             INSERT INTO sums SELECT k, SUM(v) AS total, COUNT(*) AS n FROM changes GROUP BY k;"
        ),
    )
    .unwrap();
    let cluster = unique("k");
    let mut instances = vec![Instance::start(&sql, &cluster, "a", dir.path())];
    instances[0].wait_for(ASSIGNED);
    instances.push(Instance::start(&sql, &cluster, "b", dir.path()));
    instances[1].wait_for(ASSIGNED);
    wait_for_task_checkpoints(&mut instances[1], 4);
    instances.remove(1).kill();
    // The output changelog by key (a key's changes in one partition, in order): `c`
    // sets the key's row, `d` takes it away.
    let materialized = || {
        let mut by_key = std::collections::BTreeMap::<i64, (i64, i64)>::new();
        for r in read_topic(bootstrap, &output) {
            let v: serde_json::Value = serde_json::from_str(&r.payload).unwrap();
            match v["op"].as_str() {
                Some("c") => {
                    let a = &v["after"];
                    by_key.insert(
                        a["k"].as_i64().unwrap(),
                        (a["total"].as_i64().unwrap(), a["n"].as_i64().unwrap()),
                    );
                }
                Some("d") => {
                    by_key.remove(&v["before"]["k"].as_i64().unwrap());
                }
                other => panic!("unexpected change {other:?}: {v}"),
            }
        }
        by_key
    };
    let start = Instant::now();
    let got = loop {
        instances[0].assert_running();
        let got = materialized();
        if got == want || start.elapsed() > Duration::from_secs(120) {
            break got;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(got, want, "\n{}", instances[0].log());
    assert!(
        instances[0]
            .log()
            .contains("restoring a partition's state from the checkpoint")
            && instances[0].log().contains("/b-"),
        "a restored none of b's tasks:\n{}",
        instances[0].log()
    );
    for i in instances {
        i.kill();
    }
    delete_topics(bootstrap, &[&input, &output]).await;
}

/// `n` JSON events `{"k", "<value>", "ts"}` over `partitions` partitions of `topic`
/// (event `i`: partition `i % partitions`, key `i % keys`, value `i`, event time
/// `i * step_ms`), then one event per partition an hour later that closes everything.
fn produce_events(
    bootstrap: &str,
    topic: &str,
    value: &str,
    n: i64,
    (partitions, keys, step_ms): (i64, i64, i64),
) {
    let msg = |partition: i64, k: i64, v: i64, ts: i64| crate::kafka::Msg {
        partition: partition as i32,
        key: None,
        payload: format!(r#"{{"k": {k}, "{value}": {v}, "ts": "{}"}}"#, day_time(ts)).into_bytes(),
        headers: Vec::new(),
    };
    let mut msgs: Vec<crate::kafka::Msg> = (0..n)
        .map(|i| msg(i % partitions, i % keys, i, i * step_ms))
        .collect();
    for p in 0..partitions {
        msgs.push(msg(p, -1, -1, n * step_ms + 3_600_000));
    }
    produce(bootstrap, topic, &msgs);
}

/// The settings every table of these tests shares: the broker, JSON, and a group
/// session short enough for a killed instance's partitions to move within seconds.
fn kafka_table(bootstrap: &str, topic: &str) -> String {
    format!(
        "'connector' = 'kafka', 'topic' = '{topic}', 'properties.bootstrap.servers' = '{bootstrap}',
         'format' = 'json', 'scan.startup.mode' = 'earliest-offset',
         'properties.heartbeat.interval.ms' = '100', 'properties.session.timeout.ms' = '6000',
         'properties.max.partition.fetch.bytes' = '4096'"
    )
}

/// Two instances, one SIGKILLed once its partition tasks have committed, one started
/// after: what `output` then holds, each record's JSON once per time it was committed.
fn run_with_a_kill(
    sql: &Path,
    dir: &Path,
    bootstrap: &str,
    output: &str,
    want: usize,
) -> Vec<String> {
    let cluster = unique("k");
    let mut instances = vec![
        Instance::start(sql, &cluster, "a", dir),
        Instance::start(sql, &cluster, "b", dir),
    ];
    for i in &mut instances {
        i.wait_for(ASSIGNED);
    }
    wait_for_task_checkpoints(&mut instances[1], 4);
    instances.remove(1).kill();
    std::thread::sleep(Duration::from_millis(1_500));
    instances.push(Instance::start(sql, &cluster, "c", dir));
    let start = Instant::now();
    let read = || -> Vec<String> {
        read_topic(bootstrap, output)
            .into_iter()
            .map(|r| r.payload)
            .collect()
    };
    while read().len() < want && start.elapsed() < Duration::from_secs(180) {
        for i in instances.iter_mut() {
            i.assert_running();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // A moment later too: nothing is committed twice late.
    std::thread::sleep(Duration::from_secs(2));
    let got = read();
    let r = ps_cluster(&cluster, bootstrap);
    println!("ps --cluster: {r}");
    let logs: Vec<String> = instances
        .iter()
        .map(|i| format!("--- {}:\n{}", i.name, i.log()))
        .collect();
    for i in instances {
        i.kill();
    }
    if got.len() != want {
        println!("{}", logs.join("\n"));
    }
    got
}

/// Checks that the output (each record with how often it was committed) holds every
/// record of `want` once and nothing else.
fn assert_once<K: Ord + std::fmt::Debug>(
    got: &std::collections::BTreeMap<K, usize>,
    want: &std::collections::BTreeSet<K>,
) {
    let twice: Vec<_> = got.iter().filter(|(_, c)| **c > 1).take(5).collect();
    let missing: Vec<_> = want
        .iter()
        .filter(|k| !got.contains_key(k))
        .take(5)
        .collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains(k)).take(5).collect();
    assert!(
        twice.is_empty() && missing.is_empty() && extra.is_empty(),
        "{} records, {} expected; twice {twice:?}, missing {missing:?}, extra {extra:?}",
        got.values().sum::<usize>(),
        want.len()
    );
}

/// An interval join across instances: both inputs cross repartition topics keyed by
/// the join key, co-partitioned (the inputs' topics have 4 and 2 partitions; both
/// repartition topics get 4), and each partition task joins partition p of both. One
/// instance is SIGKILLed mid-run: every joined pair is in the read_committed output
/// once, as the batch join of the inputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_join_across_instances_joins_co_partitioned_inputs_exactly_once() {
    let bootstrap = kafka();
    let (left, right, output) = (unique("join-l"), unique("join-r"), unique("join-out"));
    create_topic(bootstrap, &left, 4).await;
    create_topic(bootstrap, &right, 2).await;
    create_topic(bootstrap, &output, 2).await;
    let (n, m) = (8_000i64, 1_600i64);
    produce_events(bootstrap, &left, "v", n, (4, 13, 10));
    produce_events(bootstrap, &right, "w", m, (2, 13, 50));
    // The batch join: same key, right within 500 ms of left.
    let mut want = std::collections::BTreeSet::new();
    for i in 0..n {
        for j in 0..m {
            if i % 13 == j % 13 && (i * 10 - j * 50).abs() <= 500 {
                want.insert((i % 13, i, j));
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("join.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE l (k BIGINT, v BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
             WITH ({}, 'rows-per-second' = '1000');
             CREATE TABLE r (k BIGINT, w BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
             WITH ({});
             CREATE TABLE out (k BIGINT, v BIGINT, w BIGINT)
             WITH ('connector' = 'kafka', 'topic' = '{output}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json');
             INSERT INTO out SELECT l.k, l.v, r.w FROM l JOIN r ON l.k = r.k
               AND l.ts BETWEEN r.ts - INTERVAL '0.5' SECOND AND r.ts + INTERVAL '0.5' SECOND
             WHERE l.k >= 0;",
            kafka_table(bootstrap, &left),
            kafka_table(bootstrap, &right)
        ),
    )
    .unwrap();
    let got = run_with_a_kill(&sql, dir.path(), bootstrap, &output, want.len());
    let mut pairs = std::collections::BTreeMap::<(i64, i64, i64), usize>::new();
    for g in &got {
        let v: serde_json::Value = serde_json::from_str(g).unwrap();
        let key = (
            v["k"].as_i64().unwrap(),
            v["v"].as_i64().unwrap(),
            v["w"].as_i64().unwrap(),
        );
        *pairs.entry(key).or_default() += 1;
    }
    assert_once(&pairs, &want);
    delete_topics(bootstrap, &[&left, &right, &output]).await;
}

/// Two keyed exchanges: counts per key and one-second window, then the three largest
/// of each window (a window Top-N, keyed by the window). The first stage's tasks write
/// the second stage's repartition topic with their watermark as one writer each; one
/// instance is SIGKILLed mid-run. Every window's top three are in the read_committed
/// output once, as the batch computation says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_top_n_over_a_window_aggregate_crosses_two_repartition_topics() {
    let bootstrap = kafka();
    let (input, output) = (unique("topn-in"), unique("topn-out"));
    create_topic(bootstrap, &input, 4).await;
    create_topic(bootstrap, &output, 2).await;
    let n = 16_000i64;
    produce_events(bootstrap, &input, "v", n, (4, 13, 10));
    // The batch answer: per window, counts by key, the top three by count then key.
    let mut counts = std::collections::BTreeMap::<i64, std::collections::BTreeMap<i64, i64>>::new();
    for i in 0..n {
        *counts
            .entry(i * 10 / 1000)
            .or_default()
            .entry(i % 13)
            .or_default() += 1;
    }
    let mut want = std::collections::BTreeSet::new();
    for (w, by_key) in &counts {
        let mut ranked: Vec<(i64, i64)> = by_key.iter().map(|(k, c)| (*k, *c)).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (rn, (k, c)) in ranked.into_iter().take(3).enumerate() {
            want.insert((*w, k, c, rn as i64 + 1));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("topn.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE events (k BIGINT, v BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
             WITH ({}, 'rows-per-second' = '2000');
             CREATE TABLE out (window_start TIMESTAMP(3), k BIGINT, n BIGINT, rn BIGINT)
             WITH ('connector' = 'kafka', 'topic' = '{output}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json');
             INSERT INTO out SELECT window_start, k, n, rn FROM (
               SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end
                                            ORDER BY n DESC, k) AS rn
               FROM (SELECT window_start, window_end, k, COUNT(*) AS n
                     FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(ts), INTERVAL '1' SECOND))
                     WHERE k >= 0
                     GROUP BY window_start, window_end, k))
             WHERE rn <= 3;",
            kafka_table(bootstrap, &input)
        ),
    )
    .unwrap();
    let got = run_with_a_kill(&sql, dir.path(), bootstrap, &output, want.len());
    let mut rows = std::collections::BTreeMap::<(i64, i64, i64, i64), usize>::new();
    for g in &got {
        let v: serde_json::Value = serde_json::from_str(g).unwrap();
        let start = v["window_start"].as_str().unwrap();
        let start = log_time(&format!("{start}Z")).unwrap() as i64;
        let key = (
            start,
            v["k"].as_i64().unwrap(),
            v["n"].as_i64().unwrap(),
            v["rn"].as_i64().unwrap(),
        );
        *rows.entry(key).or_default() += 1;
    }
    assert_once(&rows, &want);
    delete_topics(bootstrap, &[&input, &output]).await;
}

/// A keyed job submitted to `sluice server` as an instance and a `sluice run --cluster`
/// process share it: the server runs its front and the partition tasks the group gives
/// it, with the state in a directory both reach. The output has every window once, the
/// server's cluster view shows both instances' tasks, a savepoint is refused with the
/// reason, and cancelling the server's job hands its tasks to the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_job_runs_on_a_server_and_a_process_as_one_cluster() {
    let bootstrap = kafka();
    let (input, output) = (unique("keyed-srv-in"), unique("keyed-srv-out"));
    create_topic(bootstrap, &input, 4).await;
    create_topic(bootstrap, &output, 2).await;
    let want = events_input(bootstrap, &input, 16_000, (4, 13, 10), true);
    let dir = tempfile::tempdir().unwrap();
    let sql = windowed_job(dir.path(), bootstrap, &input, &output);
    let cluster = unique("k");
    let shared = dir.path().to_str().unwrap();
    let (server, _data) = crate::server::start_server(&["--allow-dir", shared]);
    let script = format!(
        "SET 'sluice.cluster.name' = '{cluster}';
         SET 'sluice.cluster.instance' = 'srv';
         SET 'execution.checkpointing.interval' = '200ms';
         SET 'execution.checkpointing.dir' = '{shared}/checkpoints';
         {}",
        std::fs::read_to_string(&sql).unwrap()
    );
    // Its state must be where every instance reads it: the server's own directory is not.
    let (status, v) = server.call(
        "POST",
        "/api/jobs",
        Some(
            &serde_json::json!({ "sql": script.replace(
            &format!("SET 'execution.checkpointing.dir' = '{shared}/checkpoints';"), "") })
            .to_string(),
        ),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("execution.checkpointing.dir"),
        "{v}"
    );
    let (status, v) = server.call(
        "POST",
        "/api/jobs",
        Some(&serde_json::json!({ "sql": script, "name": "windows" }).to_string()),
    );
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_u64().unwrap();
    let mut process = vec![Instance::start(&sql, &cluster, "cli", dir.path())];
    process[0].wait_for(ASSIGNED);
    wait_for_task_checkpoints(&mut process[0], 4);
    // Both instances run keyed tasks.
    let start = Instant::now();
    loop {
        let (status, c) = server.call("GET", &format!("/api/jobs/{id}/cluster"), None);
        assert_eq!(status, 200, "{c}");
        let with_tasks: Vec<&str> = c["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["tasks"].as_array().is_some_and(|t| !t.is_empty()))
            .map(|i| i["instance"].as_str().unwrap())
            .collect();
        if with_tasks == ["cli", "srv"] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the instances' tasks: {c}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, v) = server.call("POST", &format!("/api/jobs/{id}/savepoint"), None);
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "keyed_cluster_instance", "{v}");
    // Cancelled, the server's instance stops; its tasks move to the process, which
    // restores their state and finishes the job.
    let (status, v) = server.call("POST", &format!("/api/jobs/{id}/cancel"), None);
    assert_eq!(status, 202, "{v}");
    assert_windows(bootstrap, &output, &want, &mut process);
    let (_, job) = server.call("GET", &format!("/api/jobs/{id}"), None);
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(
        process[0]
            .log()
            .contains("restoring a partition's state from the checkpoint")
            && process[0].log().contains("/srv-"),
        "the process restored none of the server's tasks:\n{}",
        process[0].log()
    );
    for i in process {
        i.kill();
    }
    delete_topics(bootstrap, &[&input, &output]).await;
}
