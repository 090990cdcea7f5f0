//! Several `sluice run --cluster` processes sharing one job through the consumer group
//! of a real Apache Kafka broker: instances killed, added, and stalled past their
//! session, the output read back under `read_committed` exactly once.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::{Broker, kafka};
use crate::kafka::{BIN, create_topic, delete_topics, id_msgs, produce, read_topic, unique};

/// What an instance logs when it starts reading a partition.
pub(crate) const ASSIGNED: &str = "reading a partition the consumer group assigned";

/// One instance: its process and its log.
pub(crate) struct Instance {
    pub(crate) name: String,
    pub(crate) child: Child,
    log: PathBuf,
}

impl Instance {
    pub(crate) fn start(sql: &Path, cluster: &str, name: &str, dir: &Path) -> Instance {
        Self::start_in(None, sql, cluster, name, dir)
    }

    /// An instance with more flags.
    pub(crate) fn start_with(
        sql: &Path,
        cluster: &str,
        name: &str,
        dir: &Path,
        extra: &[&str],
    ) -> Instance {
        Self::start_env(sql, cluster, name, dir, extra, &[])
    }

    /// An instance with more flags and environment variables (`--checkpoint-dir` among
    /// the flags replaces the default, a directory in `dir`).
    pub(crate) fn start_env(
        sql: &Path,
        cluster: &str,
        name: &str,
        dir: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Instance {
        Self::launch(None, sql, cluster, name, dir, extra, env)
    }

    /// An instance in network namespace `netns` (`ip netns exec`), if given.
    pub(crate) fn start_in(
        netns: Option<&str>,
        sql: &Path,
        cluster: &str,
        name: &str,
        dir: &Path,
    ) -> Instance {
        Self::launch(netns, sql, cluster, name, dir, &[], &[])
    }

    fn launch(
        netns: Option<&str>,
        sql: &Path,
        cluster: &str,
        name: &str,
        dir: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Instance {
        let log = dir.join(format!("{name}.log"));
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        command.arg("run").arg(sql);
        if !extra.contains(&"--checkpoint-dir") {
            command.arg("--checkpoint-dir").arg(dir.join("checkpoints"));
        }
        let child = command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args([
                "--quiet",
                "-p",
                "2",
                "--cluster",
                cluster,
                "--instance",
                name,
            ])
            .args([
                "--checkpoint-interval",
                "200ms",
                "--delivery",
                "exactly-once",
            ])
            .args(["--restart-attempts", "20", "--restart-delay", "500ms"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Instance {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the instance has logged `text` (at most 60 s).
    pub(crate) fn wait_for(&mut self, text: &str) {
        let start = Instant::now();
        while !self.log().contains(text) {
            self.assert_running();
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "instance {} did not log `{text}` in 60 s:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {} failed", self.name);
    }

    /// Waits (at most `limit`) for the instance to end, and its exit status.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "instance {} did not stop within {limit:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fails the test when the instance has ended (it runs until it is stopped).
    pub(crate) fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "instance {} ended ({status}) while the job ran:\n{}",
                self.name,
                self.log()
            );
        }
    }

    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `sluice ps --cluster CLUSTER --bootstrap BOOTSTRAP --json` prints.
pub(crate) fn ps_cluster(cluster: &str, bootstrap: &str) -> serde_json::Value {
    let out = Command::new(BIN)
        .args([
            "ps",
            "--cluster",
            cluster,
            "--bootstrap",
            bootstrap,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The time of day (UTC, seconds) of a log line, as its timestamp says.
pub(crate) fn log_time(line: &str) -> Option<f64> {
    let t = line.split('T').nth(1)?.split('Z').next()?;
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The time of day now (UTC, seconds), as log lines stamp it.
pub(crate) fn now_of_day() -> f64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    t % 86_400.0
}

/// A stateless job over the ids of `input` into `output`: the ids and their doubles.
fn job(dir: &Path, bootstrap: &str, input: &str, output: &str) -> PathBuf {
    let sql = dir.join("job.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE ids (id BIGINT) WITH ('connector' = 'kafka', 'topic' = '{input}',
                'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
                'scan.startup.mode' = 'earliest-offset', 'rows-per-second' = '1500',
                -- Members hear of rebalances at their next heartbeat, and a member that
                -- stops answering is dropped after the session timeout.
                'properties.heartbeat.interval.ms' = '100',
                'properties.session.timeout.ms' = '6000',
                'properties.max.partition.fetch.bytes' = '4096');
             CREATE TABLE out_ids (id BIGINT, twice BIGINT) WITH ('connector' = 'kafka',
                'topic' = '{output}', 'properties.bootstrap.servers' = '{bootstrap}',
                'format' = 'json');
             INSERT INTO out_ids SELECT id, id * 2 AS twice FROM ids WHERE id >= 0;"
        ),
    )
    .unwrap();
    sql
}

/// Topic `input.0` with `input.1` partitions holding ids `0..n` spread over them in
/// turn, and an empty topic `output.0` with `output.1`.
async fn topics_with_ids(bootstrap: &str, input: (&str, i32), output: (&str, i32), n: i64) {
    create_topic(bootstrap, input.0, input.1).await;
    create_topic(bootstrap, output.0, output.1).await;
    let msgs: Vec<_> = id_msgs(0..n)
        .into_iter()
        .enumerate()
        .map(|(i, mut m)| {
            m.partition = (i as i64 % i64::from(input.1)) as i32;
            m
        })
        .collect();
    produce(bootstrap, input.0, &msgs);
}

/// The ids committed to `output`, sorted.
fn committed_ids(bootstrap: &str, output: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = read_topic(bootstrap, output)
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.payload).unwrap();
            assert_eq!(v["twice"], v["id"].as_i64().unwrap() * 2, "{v}");
            v["id"].as_i64().unwrap()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// Waits until `n` ids are committed, the instances running all along, then checks
/// that each id is there exactly once (a moment later too: nothing is committed twice
/// late).
fn assert_exactly_once(bootstrap: &str, output: &str, n: i64, instances: &mut [Instance]) {
    let start = Instant::now();
    let logs = |instances: &[Instance]| {
        instances
            .iter()
            .map(|i| format!("--- {}:\n{}", i.name, i.log()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    loop {
        for i in instances.iter_mut() {
            i.assert_running();
        }
        let ids = committed_ids(bootstrap, output);
        if ids.len() as i64 >= n {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "only {} of {n} ids were committed in 180 s:\n{}",
            ids.len(),
            logs(instances)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    let ids = committed_ids(bootstrap, output);
    let twice: Vec<i64> = ids
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .take(8)
        .collect();
    let want: Vec<i64> = (0..n).collect();
    assert!(
        twice.is_empty() && ids == want,
        "{} ids committed, {n} expected; twice: {twice:?}\n{}",
        ids.len(),
        logs(instances)
    );
}

/// Three instances share a job exactly-once; one is SIGKILLed mid-run and the others
/// take its partitions over (after its session times out) from the offsets its
/// transactions committed; a fourth joins mid-run and takes partitions from the others,
/// which let them go only once what they read from them is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_a_job_survive_a_kill_and_take_in_a_new_one_exactly_once() {
    let bootstrap = kafka();
    let (input, output) = (unique("cluster-in"), unique("cluster-out"));
    let n: i64 = 30_000;
    topics_with_ids(bootstrap, (&input, 6), (&output, 3), n).await;
    let dir = tempfile::tempdir().unwrap();
    let sql = job(dir.path(), bootstrap, &input, &output);
    let cluster = unique("c");
    // a reads every partition at first, then hands some over to b and c.
    let bind = format!("127.0.0.1:{}", crate::broker::free_port());
    let mut instances = vec![Instance::start_with(
        &sql,
        &cluster,
        "a",
        dir.path(),
        &["--metrics-bind", &bind],
    )];
    std::thread::sleep(Duration::from_millis(2_500));
    for name in ["b", "c"] {
        instances.push(Instance::start(&sql, &cluster, name, dir.path()));
    }
    // b is killed once it reads partitions of its own, a moment later.
    instances[1].wait_for(ASSIGNED);
    std::thread::sleep(Duration::from_millis(1_000));
    instances.remove(1).kill();
    let killed_at = now_of_day();
    std::thread::sleep(Duration::from_millis(1_500));
    instances.push(Instance::start(&sql, &cluster, "d", dir.path()));
    assert_exactly_once(bootstrap, &output, n, &mut instances);
    let logs: Vec<String> = instances.iter().map(Instance::log).collect();
    // Partitions moved to the newcomers only after their offsets were committed.
    assert!(
        logs[0].contains("handed partitions over to the consumer group"),
        "the first instance handed no partition over:\n{}",
        logs[0]
    );
    assert!(
        logs[2].contains(ASSIGNED),
        "the instance added mid-run read nothing:\n{}",
        logs[2]
    );
    // a's metrics count the partitions it gave up and the last one's pause.
    let (_, metrics) = sluice::connectors::http::HttpUrl::parse(&format!("http://{bind}"))
        .unwrap()
        .request("GET", "/metrics", None, &[])
        .unwrap();
    let revoked: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_partitions_revoked_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        revoked >= 2.0 && metrics.contains("sluice_last_handover_pause_seconds{"),
        "{metrics}"
    );
    // Figures for the docs (not asserted): how long b's partitions waited for a new
    // reader, and how long revoked partitions waited for their commit.
    let takeover = logs
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| l.contains(ASSIGNED))
        .filter_map(log_time)
        .filter(|&t| t > killed_at)
        .fold(f64::INFINITY, f64::min);
    let mut pauses = Vec::new();
    let mut revoked = None;
    for line in logs[0].lines() {
        if line.contains("took a partition away") {
            revoked = revoked.or(log_time(line));
        } else if line.contains("handed partitions over")
            && let (Some(r), Some(h)) = (revoked.take(), log_time(line))
        {
            pauses.push(h - r);
        }
    }
    println!(
        "takeover {:.2} s after the kill (session timeout 6 s); revoked partitions held for their commit: {:?} s",
        takeover - killed_at,
        pauses
            .iter()
            .map(|p| (p * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
    // `sluice ps --cluster` shows the three live instances (b's membership ended with
    // its session), their hosts and the six partitions among them, and no lag.
    let start = Instant::now();
    loop {
        let r = ps_cluster(&cluster, bootstrap);
        let names: Vec<&str> = r["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["instance"].as_str().unwrap())
            .collect();
        let partitions: usize = r["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["partitions"].as_array().unwrap().len())
            .sum();
        if names == ["a", "c", "d"] && partitions == 6 && r["total_lag"] == 0 {
            for i in r["instances"].as_array().unwrap() {
                assert_eq!(i["subtasks"], 2, "{r}");
                assert!(i["host"].as_str().unwrap().contains("127.0.0.1"), "{r}");
            }
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ps --cluster did not settle on instances a, c, d: {r}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for i in instances {
        i.kill();
    }
    delete_topics(bootstrap, &[&input, &output]).await;
}

/// An instance that stops answering (SIGSTOP, as a network cut) past its session
/// timeout is dropped from the group; the other instance takes its partitions over.
/// When it comes back it cannot commit what it had read (its membership is stale): its
/// transaction is aborted, it starts again from the committed offsets, and the output
/// still has every id once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_past_its_session_cannot_commit_when_it_returns() {
    let bootstrap = kafka();
    let (input, output) = (unique("fenced-in"), unique("fenced-out"));
    let n: i64 = 24_000;
    topics_with_ids(bootstrap, (&input, 4), (&output, 2), n).await;
    let dir = tempfile::tempdir().unwrap();
    let sql = job(dir.path(), bootstrap, &input, &output);
    let cluster = unique("c");
    let mut instances: Vec<Instance> = ["a", "b"]
        .iter()
        .map(|name| Instance::start(&sql, &cluster, name, dir.path()))
        .collect();
    for i in &mut instances {
        i.wait_for(ASSIGNED);
    }
    std::thread::sleep(Duration::from_millis(1_000));
    instances[0].signal("-STOP");
    // Past the 6 s session: the group drops it and gives its partitions to b.
    std::thread::sleep(Duration::from_millis(10_000));
    instances[0].signal("-CONT");
    assert_exactly_once(bootstrap, &output, n, &mut instances);
    // It fails its attempt (its membership is stale) and starts again.
    instances[0].wait_for("job failed; restarting");
    let b = instances[1].log();
    assert!(
        b.matches(ASSIGNED).count() > 2,
        "b did not take a's partitions over:\n{b}"
    );
    for i in instances {
        i.kill();
    }
    delete_topics(bootstrap, &[&input, &output]).await;
}

/// SIGTERM (how Kubernetes stops a pod) stops an instance gracefully: it commits what
/// it has read, output and offsets together, and exits; started again, it goes on from
/// there, and the output has every id once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_stopped_with_sigterm_commits_what_it_read() {
    let bootstrap = kafka();
    let (input, output) = (unique("term-in"), unique("term-out"));
    let n: i64 = 8_000;
    topics_with_ids(bootstrap, (&input, 2), (&output, 1), n).await;
    let dir = tempfile::tempdir().unwrap();
    let sql = job(dir.path(), bootstrap, &input, &output);
    let cluster = unique("c");
    let port = crate::broker::free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut a = Instance::start_with(&sql, &cluster, "a", dir.path(), &["--metrics-bind", &bind]);
    a.wait_for(ASSIGNED);
    std::thread::sleep(Duration::from_millis(1_500));
    // The instance's own metrics for Prometheus: rows through its sink, its lag (probed
    // every 2 s).
    let scrape = || {
        let (status, text) = sluice::connectors::http::HttpUrl::parse(&format!("http://{bind}"))
            .unwrap()
            .request("GET", "/metrics", None, &[])
            .unwrap();
        assert_eq!(status, 200, "{text}");
        text
    };
    let sink_in = |metrics: &str| {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("sluice_records_in_total") && l.contains("operator=\"sink out_ids\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let start = Instant::now();
    loop {
        let metrics = scrape();
        if sink_in(&metrics) > 0.0 && metrics.contains("sluice_source_lag_records{") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no sink rows or source lag in the metrics:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    a.signal("-TERM");
    let status = a.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}:\n{}", a.log());
    // What it wrote is exactly what its committed offsets cover.
    let written = committed_ids(bootstrap, &output);
    let out = Command::new(BIN)
        .args(["who-consumes", &input, "--bootstrap", bootstrap, "--json"])
        .output()
        .unwrap();
    let groups: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let group = format!("sluice-{cluster}");
    let g = groups
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == group.as_str())
        .unwrap_or_else(|| panic!("no group {group}: {groups}"));
    let committed: i64 = g["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["committed"].as_i64().unwrap_or(0))
        .sum();
    assert!(
        written.len() as i64 == committed && committed > 0 && committed <= n,
        "{} ids written, {committed} offsets committed of {n}:\n{}",
        written.len(),
        a.log()
    );
    let mut again = vec![Instance::start(&sql, &cluster, "a", dir.path())];
    assert_exactly_once(bootstrap, &output, n, &mut again);
    for i in again {
        i.kill();
    }
    delete_topics(bootstrap, &[&input, &output]).await;
}

/// Network namespaces of our own on a bridge: each one an address of its own, its link
/// to the bridge cut and restored at will. Removed when dropped. One test at a time has
/// them (the bridge's address is the same for all).
pub(crate) struct Net {
    bridge: String,
    pub(crate) namespaces: Vec<String>,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

/// Held by the test that has the network namespaces.
static NET: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `ip ARGS`, failing the test with its message.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `ip` ({e}): the cluster tests need iproute2 (scripts/test installs it)")
    });
    assert!(
        out.status.success(),
        "ip {}: {} (the cluster tests make network namespaces: they need root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    /// The bridge's address: the broker listens there.
    pub(crate) const HUB: &str = "10.77.0.1";

    /// A bridge and `n` namespaces on it (10.77.0.11, .12, …).
    pub(crate) fn new(n: usize) -> Net {
        let tag = std::process::id() % 100_000;
        let net = Net {
            bridge: format!("sb{tag}"),
            namespaces: (0..n).map(|i| format!("sn{tag}-{i}")).collect(),
            _one_at_a_time: NET.lock().unwrap_or_else(|p| p.into_inner()),
        };
        ip(&["link", "add", &net.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", Self::HUB),
            "dev",
            &net.bridge,
        ]);
        ip(&["link", "set", &net.bridge, "up"]);
        for (i, ns) in net.namespaces.iter().enumerate() {
            let (host_end, ns_end) = (net.host_end(i), format!("sv{tag}-{i}"));
            ip(&["netns", "add", ns]);
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ]);
            ip(&["link", "set", &ns_end, "netns", ns]);
            ip(&["link", "set", &host_end, "master", &net.bridge]);
            ip(&["link", "set", &host_end, "up"]);
            let addr = format!("10.77.0.{}/24", 11 + i);
            ip(&["-n", ns, "addr", "add", &addr, "dev", &ns_end]);
            ip(&["-n", ns, "link", "set", &ns_end, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn host_end(&self, i: usize) -> String {
        format!("sh{}-{i}", std::process::id() % 100_000)
    }

    /// Cuts namespace `i` off the bridge (`up == false`) or connects it again.
    pub(crate) fn link(&self, i: usize, up: bool) {
        ip(&[
            "link",
            "set",
            &self.host_end(i),
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// Instances on hosts of their own (network namespaces on a bridge, the broker on the
/// bridge's address): one is cut off from the network past its session timeout, the
/// other takes its partitions over; when its link comes back it cannot commit what it
/// had read (the group moved on), starts again from the committed offsets, and the
/// output has every id once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_the_network_is_replaced_and_cannot_commit_when_it_returns() {
    let net = Net::new(2);
    let broker = Broker::start_on(Net::HUB);
    let bootstrap = broker.bootstrap.as_str();
    let (input, output) = (unique("netns-in"), unique("netns-out"));
    let n: i64 = 24_000;
    topics_with_ids(bootstrap, (&input, 4), (&output, 2), n).await;
    let dir = tempfile::tempdir().unwrap();
    let sql = job(dir.path(), bootstrap, &input, &output);
    let cluster = unique("c");
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
    // The broker sees each instance at its own address.
    let r = ps_cluster(&cluster, bootstrap);
    let hosts: Vec<&str> = r["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["host"].as_str())
        .collect();
    assert!(
        hosts.iter().any(|h| h.contains("10.77.0.11"))
            && hosts.iter().any(|h| h.contains("10.77.0.12")),
        "the instances do not show their own addresses: {r}"
    );
    std::thread::sleep(Duration::from_millis(1_000));
    net.link(0, false);
    // Past the 6 s session (the group drops a and gives its partitions to b), but not
    // past the 10 s transaction timeout (a cluster sink's default): a's producer still
    // holds its transaction when its link comes back, and it is the commit that must
    // fail.
    std::thread::sleep(Duration::from_millis(8_500));
    net.link(0, true);
    assert_exactly_once(bootstrap, &output, n, &mut instances);
    instances[0].wait_for("job failed; restarting");
    // Which of its parts notices first depends on timing: the consumer (the group
    // dropped it), the commit (refused for the old membership), or the producer (the
    // records it sent before the cut timed out, so its transaction cannot commit).
    let a = instances[0].log();
    let failures: Vec<&str> = a.lines().filter(|l| l.contains("job failed")).collect();
    let refused = failures.iter().find(|l| {
        l.contains("the consumer group dropped this instance")
            || l.contains("cannot commit the Kafka transaction with the source's offsets")
            || (l.contains("Kafka sink to") && l.contains("Message timed out"))
    });
    assert!(
        refused.is_some(),
        "a did not fail for its lost membership or its transaction; its failures:\n{}",
        failures.join("\n")
    );
    println!("a: {}", refused.copied().unwrap_or_default());
    let b = instances[1].log();
    assert!(
        b.matches(ASSIGNED).count() > 2,
        "b did not take a's partitions over:\n{b}"
    );
    for i in instances {
        i.kill();
    }
    delete_topics(bootstrap, &[&input, &output]).await;
    drop(broker);
    drop(net);
}

/// A job submitted to `sluice server` with `SET 'sluice.cluster.name'` is an instance
/// like any other: it shares the partitions with a `sluice run --cluster` process, and
/// the output has every id once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_job_and_a_process_are_instances_of_one_cluster() {
    let bootstrap = kafka();
    let (input, output) = (unique("srv-in"), unique("srv-out"));
    let n: i64 = 16_000;
    topics_with_ids(bootstrap, (&input, 4), (&output, 2), n).await;
    let dir = tempfile::tempdir().unwrap();
    let sql = job(dir.path(), bootstrap, &input, &output);
    let cluster = unique("c");
    let (server, _data) = crate::server::start_server(&[]);
    let script = format!(
        "SET 'sluice.cluster.name' = '{cluster}';
         SET 'sluice.cluster.instance' = 'srv';
         SET 'execution.checkpointing.interval' = '200ms';
         {}",
        std::fs::read_to_string(&sql).unwrap()
    );
    let (status, v) = server.call(
        "POST",
        "/api/jobs",
        Some(&serde_json::json!({ "sql": script }).to_string()),
    );
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_u64().unwrap();
    let mut process = vec![Instance::start(&sql, &cluster, "cli", dir.path())];
    process[0].wait_for(ASSIGNED);
    assert_exactly_once(bootstrap, &output, n, &mut process);
    let (_, job) = server.call("GET", &format!("/api/jobs/{id}"), None);
    assert_eq!(job["status"], "running", "{job}");
    let r = ps_cluster(&cluster, bootstrap);
    let names: Vec<&str> = r["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cli", "srv"], "{r}");
    // The server shows the cluster of its job: through the API, and on the job's page.
    let (status, c) = server.call("GET", &format!("/api/jobs/{id}/cluster"), None);
    assert_eq!(status, 200, "{c}");
    let names: Vec<&str> = c["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cli", "srv"], "{c}");
    assert_eq!(c["total_lag"], 0, "{c}");
    let browser = crate::dashboard::Browser::start();
    browser.open(&format!("{}/jobs/{id}", server.url));
    let shown = browser.wait("the cluster's instances", |b| {
        let t = b.text("#cluster tbody");
        (t.contains("cli") && t.contains("srv")).then_some(t)
    });
    assert!(shown.contains(&input), "no partitions shown: {shown}");
    // Each instance's last rebalance: the partition it took, when (from its commits).
    assert!(
        browser.text("#cluster thead").contains("Last rebalance"),
        "{}",
        browser.text("#cluster")
    );
    browser.wait("each instance's last rebalance", |b| {
        let t = b.text("#cluster tbody");
        t.contains(" at ").then_some(())
    });
    assert!(
        browser.text("#cluster-name").contains(&cluster),
        "{}",
        browser.text("#cluster-section")
    );
    browser.js("document.querySelector('#cluster-section').scrollIntoView()");
    browser.screenshot("cluster");
    for i in process {
        i.kill();
    }
    delete_topics(bootstrap, &[&input, &output]).await;
}

/// Every document of a YAML file, as JSON (PyYAML, installed by scripts/test).
fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let python = std::env::var("SLUICE_YAML_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/sluice/pyyaml-6.0.3/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    assert!(
        Path::new(&python).exists(),
        "no Python with PyYAML at {python}: scripts/test installs it (PyPI PyYAML into ~/.cache/sluice/pyyaml-6.0.3); or set SLUICE_YAML_PYTHON"
    );
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys, json, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} is not valid YAML: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The Kubernetes manifests hang together: the StatefulSet runs the ConfigMap's job as
/// instances of one cluster named after their pods, its headless Service is the one it
/// names, and the autoscaler watches that cluster's consumer group on the job's topic.
#[test]
fn the_kubernetes_manifests_run_the_job_as_one_cluster() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes");
    let of = |file: &str, kind: &str| -> serde_json::Value {
        yaml_documents(&dir.join(file))
            .into_iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {file}"))
    };
    let config = of("job.yaml", "ConfigMap");
    let service = of("statefulset.yaml", "Service");
    let set = of("statefulset.yaml", "StatefulSet");
    let scaler = of("autoscaler.yaml", "ScaledObject");

    assert_eq!(service["spec"]["clusterIP"], "None", "{service}");
    assert_eq!(set["spec"]["serviceName"], service["metadata"]["name"]);
    let labels = &set["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&set["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&service["spec"]["selector"], labels);
    let pod = &set["spec"]["template"]["spec"];
    assert!(
        pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 30,
        "SIGTERM needs time to commit: {pod}"
    );
    let container = &pod["containers"][0];
    let command: Vec<&str> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let after = |flag: &str| {
        let i = command
            .iter()
            .position(|a| *a == flag)
            .unwrap_or_else(|| panic!("no {flag} in {command:?}"));
        command[i + 1]
    };
    assert_eq!(&command[..2], ["sluice", "run"]);
    let cluster = after("--cluster");
    // Each pod is an instance named after itself.
    assert_eq!(after("--instance"), "$(POD_NAME)");
    let env = container["env"].as_array().unwrap();
    assert!(
        env.iter().any(|e| e["name"] == "POD_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"),
        "{env:?}"
    );
    // Prometheus finds each instance's metrics where it serves them.
    let port = after("--metrics-bind").rsplit_once(':').unwrap().1;
    let annotations = &set["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], port);
    assert!(
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["containerPort"]
                .as_u64()
                .map(|n| n.to_string())
                .as_deref()
                == Some(port)),
        "{container}"
    );
    // The job file is the ConfigMap's, mounted where the command reads it.
    let (mount_dir, file) = command[2].rsplit_once('/').unwrap();
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == mount_dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {mount_dir}"));
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["configMap"]["name"], config["metadata"]["name"]);
    let sql = config["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("the ConfigMap has no {file}"));
    // The autoscaler scales this StatefulSet on this cluster's group, on the job's input.
    let target = &scaler["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"], "StatefulSet");
    assert_eq!(target["name"], set["metadata"]["name"]);
    let trigger = &scaler["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "kafka");
    assert_eq!(
        trigger["metadata"]["consumerGroup"],
        format!("sluice-{cluster}")
    );
    let topic = sql
        .split("'topic' = '")
        .nth(1)
        .and_then(|t| t.split('\'').next())
        .unwrap();
    assert_eq!(trigger["metadata"]["topic"], topic);
    assert!(
        scaler["spec"]["maxReplicaCount"].as_u64() >= scaler["spec"]["minReplicaCount"].as_u64()
    );
}
