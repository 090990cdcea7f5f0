//! `sluice server` and its REST API, through the CLI and raw HTTP: submit, list, detail,
//! cancel, Prometheus metrics, the OpenAPI document, JSON errors, tokens.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::connectors::http::HttpUrl;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A server child process, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_server(extra: &[&str]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (start_server_in(dir.path(), extra), dir)
}

fn start_server_in(data: &std::path::Path, extra: &[&str]) -> Server {
    start_server_with(data, extra, Stdio::null())
}

/// A server whose standard output is a pipe the caller reads (`server.stdout()`).
pub(crate) fn start_server_piped(extra: &[&str]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (start_server_with(dir.path(), extra, Stdio::piped()), dir)
}

fn start_server_with(data: &std::path::Path, extra: &[&str], stdout: Stdio) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(BIN)
        .args(["server", "--bind", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .env_remove("SLUICE_TOKEN")
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

impl Server {
    /// The server's standard output, when started with [`start_server_piped`].
    pub(crate) fn stdout(&mut self) -> std::process::ChildStdout {
        self.child
            .stdout
            .take()
            .expect("a server started with its output piped")
    }

    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (status, text) = HttpUrl::parse(&self.url)
            .unwrap()
            .request(method, path, body, &[("Content-Type", "application/json")])
            .unwrap();
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, v)
    }

    fn text(&self, path: &str) -> String {
        HttpUrl::parse(&self.url)
            .unwrap()
            .request("GET", path, None, &[])
            .unwrap()
            .1
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .args(["--server", &self.url])
            .env_remove("SLUICE_TOKEN")
            .output()
            .unwrap()
    }

    /// Polls a job until `done` holds for its detail.
    pub(crate) fn wait_for(
        &self,
        id: u64,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let (status, v) = self.call("GET", &format!("/api/jobs/{id}"), None);
            assert_eq!(status, 200, "{v}");
            if done(&v) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "job {id} never got {what}: {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

const BOUNDED: &str =
    "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '20000');
CREATE TABLE sink (auction BIGINT, price BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO sink SELECT auction, price FROM bid WHERE price > 100;";

pub(crate) const UNBOUNDED: &str =
    "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'rate-limit' = '2000');
CREATE TABLE sink (auction BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO sink SELECT auction FROM bid;";

pub(crate) const FAILING: &str =
    "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '1000');
CREATE TABLE sink (x BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO sink SELECT auction / (auction - auction) FROM bid;";

#[test]
fn the_server_runs_lists_cancels_and_reports_jobs() {
    let (server, dir) = start_server(&[]);

    // Submit through the CLI: a bounded job runs to the end.
    let script = dir.path().join("bounded.sql");
    std::fs::write(&script, BOUNDED).unwrap();
    let out = server.cli(&["submit", script.to_str().unwrap(), "--name", "bounded"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let done = server.wait_for(id, "finished", |v| v["status"] == "finished");
    // The counts are exact: 20 000 generated events hold 18 400 bids, and the sink gets
    // what the same script gets when `sluice run` runs it.
    assert_eq!(done["source_records"].as_u64(), Some(18_400), "{done}");
    let run = std::process::Command::new(BIN)
        .arg("run")
        .arg(&script)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stderr);
    let written: u64 = said
        .split("rows in, ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no row count in: {said}"));
    assert!(written > 0 && written < 18_400, "{said}");
    assert_eq!(done["sink_records"].as_u64(), Some(written), "{done}");
    // Not an instance of a cluster: there is no cluster to show.
    assert_eq!(done["cluster"], serde_json::Value::Null, "{done}");
    let (status, c) = server.call("GET", &format!("/api/jobs/{id}/cluster"), None);
    assert_eq!(
        (status, c["error"]["code"].as_str()),
        (409, Some("not_a_cluster_instance")),
        "{c}"
    );
    assert!(
        done["graph"]["nodes"].as_array().unwrap().len() >= 2,
        "{done}"
    );
    assert!(
        !done["graph"]["edges"].as_array().unwrap().is_empty(),
        "{done}"
    );
    let ops = done["operators"].as_array().unwrap();
    let sink = ops
        .iter()
        .find(|o| o["name"].as_str().unwrap().contains("sink"))
        .unwrap();
    assert!(sink["latency_p99_ms"].as_f64().is_some(), "{sink}");
    // The runtime's plan text names the operators of the graph.
    let explain = done["explain"].as_str().unwrap();
    assert!(
        explain.contains(sink["name"].as_str().unwrap()),
        "{explain}"
    );

    // An unbounded job runs until cancelled.
    let (status, v) = server.call(
        "POST",
        "/api/jobs",
        Some(&serde_json::json!({ "sql": UNBOUNDED, "name": "endless" }).to_string()),
    );
    assert_eq!(status, 201, "{v}");
    let endless = v["id"].as_u64().unwrap();
    server.wait_for(endless, "rows", |v| {
        v["source_records"].as_u64().unwrap_or(0) > 0
    });
    let out = server.cli(&["cancel", &endless.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_for(endless, "cancelled", |v| v["status"] == "cancelled");
    let (status, v) = server.call("POST", &format!("/api/jobs/{endless}/cancel"), None);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("not_running")),
        "{v}"
    );

    // A job that fails at run time fails alone, with its error kept.
    let (status, v) = server.call(
        "POST",
        "/api/jobs",
        Some(&serde_json::json!({ "sql": FAILING, "name": "failing" }).to_string()),
    );
    assert_eq!(status, 201, "{v}");
    let failing = v["id"].as_u64().unwrap();
    let failed = server.wait_for(failing, "failed", |v| v["status"] == "failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("division by zero"),
        "{failed}"
    );
    // Its log, errors only: the failing task and the cause.
    let (status, errors) = server.call(
        "GET",
        &format!("/api/jobs/{failing}/logs?level=error"),
        None,
    );
    assert_eq!(status, 200, "{errors}");
    let errors = errors.as_array().unwrap();
    assert!(!errors.is_empty());
    assert!(errors.iter().all(|e| e["level"] == "ERROR"), "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| !e["task"].as_str().unwrap().is_empty()
                && e["message"]
                    .as_str()
                    .unwrap()
                    .to_lowercase()
                    .contains("division by zero")),
        "{errors:?}"
    );
    // The failure carries the stack where the error was raised.
    assert!(
        errors.iter().any(|e| e["trace"]
            .as_str()
            .is_some_and(|t| t.contains("sluice_runtime::expr"))),
        "{errors:?}"
    );
    assert!(
        failed["failures"][0]["trace"]
            .as_str()
            .is_some_and(|t| t.contains("sluice_runtime")),
        "{failed}"
    );
    // The same through the CLI.
    let out = server.cli(&[
        "logs",
        &failing.to_string(),
        "--errors",
        "-q",
        "division by",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("ERROR"), "{text}");
    assert!(
        text.contains("sluice_runtime::expr"),
        "the stack trace: {text}"
    );
    let out = server.cli(&["explain", "--job", &id.to_string()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), explain);
    // All levels of the bounded job, searched by text.
    let (_, info) = server.call(
        "GET",
        &format!("/api/jobs/{id}/logs?q=job%20finished"),
        None,
    );
    assert!(!info.as_array().unwrap().is_empty(), "{info}");
    // The finder's other filters, on the failed job (its log no longer grows): the newest
    // `limit`, oldest first; `warn` and above; one task's events.
    let (_, all) = server.call("GET", &format!("/api/jobs/{failing}/logs"), None);
    let all = all.as_array().unwrap();
    let (_, newest) = server.call("GET", &format!("/api/jobs/{failing}/logs?limit=2"), None);
    assert_eq!(
        newest.as_array().unwrap(),
        &all[all.len() - 2..],
        "{newest}"
    );
    let (_, warn) = server.call("GET", &format!("/api/jobs/{failing}/logs?level=warn"), None);
    let warn = warn.as_array().unwrap();
    let at_least_warn: Vec<_> = all
        .iter()
        .filter(|e| e["level"] == "WARN" || e["level"] == "ERROR")
        .collect();
    assert!(warn.len() < all.len() && warn.len() >= errors.len());
    assert!(warn.iter().eq(at_least_warn), "{warn:?}");
    let task = errors
        .iter()
        .map(|e| e["task"].as_str().unwrap())
        .find(|t| !t.is_empty())
        .unwrap();
    let encoded = sluice_testkit::percent_encode(task);
    let (_, of_task) = server.call(
        "GET",
        &format!("/api/jobs/{failing}/logs?task={encoded}"),
        None,
    );
    let of_task = of_task.as_array().unwrap();
    let expected: Vec<_> = all
        .iter()
        .filter(|e| e["task"].as_str().unwrap().contains(task))
        .collect();
    assert!(!of_task.is_empty() && of_task.len() < all.len(), "{task}");
    assert!(of_task.iter().eq(expected), "{task}: {of_task:?}");
    let (status, v) = server.call("GET", &format!("/api/jobs/{id}/logs?level=loud"), None);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );

    // The list, through the API and the CLI.
    let (status, list) = server.call("GET", "/api/jobs", None);
    assert_eq!(status, 200);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bounded", "endless", "failing"]);
    let out = server.cli(&["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("NAME") && lines[0].contains("STATUS"),
        "a header: {text}"
    );
    for (name, status) in [
        ("bounded", "finished"),
        ("endless", "cancelled"),
        ("failing", "failed"),
    ] {
        assert!(
            lines.iter().any(|l| l.contains(name) && l.contains(status)),
            "{name} {status}: {text}"
        );
    }
    let out = server.cli(&["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);
    // One job, readable: status, counts, each operator on a line, the failure.
    let out = server.cli(&["status", &failing.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("job {failing}  failing  failed")),
        "{text}"
    );
    assert!(
        text.contains("error: ") && text.to_lowercase().contains("division by zero"),
        "{text}"
    );
    assert!(
        text.contains("OPERATOR") && text.contains("project"),
        "{text}"
    );
    assert!(text.lines().count() < 20, "{text}");
    let out = server.cli(&["status", &failing.to_string(), "--json"]);
    let detail: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(detail["status"], "failed");

    // Lineage: what each job reads and writes, through the API and `sluice ps`.
    let (status, lineage) = server.call("GET", "/api/lineage", None);
    assert_eq!(status, 200);
    let first = &lineage.as_array().unwrap()[0];
    assert_eq!(
        first["reads"],
        serde_json::json!([{"connector": "nexmark", "name": "bid"}]),
        "{lineage}"
    );
    assert_eq!(
        first["writes"],
        serde_json::json!([{"connector": "blackhole", "name": "blackhole"}]),
        "{lineage}"
    );
    let out = server.cli(&["ps"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("nexmark:bid -> bounded -> blackhole:blackhole"),
        "{text}"
    );

    // Prometheus metrics: per job, operator and subtask, with a job running (the
    // event-time lag is a running job's).
    let (status, v) = server.call(
        "POST",
        "/api/jobs",
        Some(&serde_json::json!({ "sql": UNBOUNDED, "name": "watched" }).to_string()),
    );
    assert_eq!(status, 201, "{v}");
    let watched = v["id"].as_u64().unwrap();
    server.wait_for(watched, "a watermark", |v| {
        v["operators"]
            .as_array()
            .is_some_and(|o| o.iter().any(|o| o["watermark_ms"].is_i64()))
    });
    let metrics = server.text("/metrics");
    for needle in [
        "# TYPE sluice_records_out_total counter",
        "sluice_records_out_total{job_name=\"bounded\",operator=",
        ",operator_id=\"",
        "# TYPE sluice_end_to_end_latency_seconds histogram",
        "sluice_end_to_end_latency_seconds_bucket{job_name=\"bounded\"",
        "le=\"0.1\"",
        "le=\"+Inf\"",
        "sluice_end_to_end_latency_seconds_count{job_name=\"bounded\"",
        "sluice_job_running{job_name=\"endless\"} 0",
        "sluice_checkpoints_total{job_name=\"bounded\",outcome=\"completed\"}",
        "# TYPE sluice_input_queue gauge",
        "# TYPE sluice_busy_seconds_total counter",
        "sluice_input_queue{job_name=\"bounded\",operator=",
        "sluice_restarts_total{job_name=\"failing\"} 0",
    ] {
        assert!(metrics.contains(needle), "no `{needle}` in:\n{metrics}");
    }
    // Every series the Grafana dashboard under deploy/ queries is one the server serves.
    let grafana: serde_json::Value =
        serde_json::from_str(include_str!("../../../../deploy/grafana/sluice.json")).unwrap();
    let mut queried = 0;
    for panel in grafana["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("sluice_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // A histogram's series are its family's.
                let name = name.strip_suffix("_bucket").unwrap_or(&name).to_string();
                queried += 1;
                assert!(
                    metrics.contains(&format!("# TYPE {name} ")),
                    "the Grafana dashboard queries `{name}`, which /metrics does not serve"
                );
            }
        }
    }
    assert!(queried >= 15, "{queried}");
    // A standard exposition parser (Prometheus's Python client) reads it, and no two
    // samples share a name and label set (two chained operators both named `project`
    // once did).
    let python = std::env::var("SLUICE_PROM_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/sluice/prometheus-client-0.26.0/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    assert!(
        std::path::Path::new(&python).exists(),
        "no Python with prometheus_client at {python}: scripts/test installs it (PyPI prometheus-client into ~/.cache/sluice/prometheus-client-0.26.0); or set SLUICE_PROM_PYTHON"
    );
    let mut parser = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys, json\n\
             from prometheus_client.parser import text_string_to_metric_families\n\
             seen = [[s.name, sorted(s.labels.items())] for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]\n\
             print(json.dumps(seen))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut parser.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let parsed = parser.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "the parser refused /metrics: {}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let samples: Vec<serde_json::Value> = serde_json::from_slice(&parsed.stdout).unwrap();
    assert!(samples.len() > 50, "{}", samples.len());
    let mut unique = std::collections::HashSet::new();
    for sample in &samples {
        assert!(
            unique.insert(sample.to_string()),
            "a duplicate series: {sample}"
        );
    }
    // Two chained operators both named `project` (the failing job's) are told apart.
    let projects: std::collections::HashSet<String> = samples
        .iter()
        .filter(|s| s[0] == "sluice_records_in_total")
        .filter(|s| s[1].to_string().contains("[\"operator\",\"project\"]"))
        .map(|s| s[1].to_string())
        .collect();
    assert!(projects.len() >= 2, "{projects:?}");
    let (status, v) = server.call("POST", &format!("/api/jobs/{watched}/cancel"), None);
    assert_eq!(status, 202, "{v}");
    // Bytes flow: the bounded job's source emitted some.
    let bytes_out: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_bytes_out_total{job_name=\"bounded\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(bytes_out > 20_000, "{metrics}");
    // The log file on disk, as JSON lines.
    let log = std::fs::read_to_string(dir.path().join("logs/bounded.log")).unwrap();
    assert!(log.contains("job finished"), "{log}");

    // Bad requests: JSON errors with a code and a message.
    let bad_sql = serde_json::json!({ "sql": "SELEC auction FROM bid" }).to_string();
    let cases: [(&str, &str, Option<&str>, u16, &str); 6] = [
        ("POST", "/api/jobs", Some(bad_sql.as_str()), 400, "bad_sql"),
        ("POST", "/api/jobs", Some("{not json"), 400, "bad_request"),
        (
            "POST",
            "/api/jobs",
            Some("{\"sql\": \"SET 'a' = 'b'\"}"),
            400,
            "bad_sql",
        ),
        ("GET", "/api/jobs/99", None, 404, "not_found"),
        ("GET", "/api/jobs/abc", None, 400, "bad_request"),
        ("GET", "/api/nothing", None, 404, "not_found"),
    ];
    for (method, path, body, want, code) in cases {
        let (status, v) = server.call(method, path, body);
        assert_eq!(status, want, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], code, "{method} {path}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let (_, v) = server.call("POST", "/api/jobs", Some(&bad_sql));
    assert!(
        v["error"]["message"].as_str().unwrap().contains("line 1"),
        "{v}"
    );

    // The OpenAPI document is the server's own: every operation it lists is served
    // (none falls through to "no such endpoint"), and the documented request types are
    // the ones the handlers take.
    let (status, doc) = server.call("GET", "/api/openapi.json", None);
    assert_eq!(status, 200);
    assert_eq!(&doc, sluice_server::openapi_document());
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "987654")
            .replace("{name}", "no-such-rule");
        for method in item.as_object().unwrap().keys() {
            let (status, v) = server.call(&method.to_uppercase(), &concrete, None);
            let fell_through = v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("no such endpoint"));
            assert!(
                !fell_through && status != 405,
                "{method} {path}: {status} {v}"
            );
            operations += 1;
        }
    }
    assert!(operations >= 13, "{operations} operations documented");
    let schemas = &doc["components"]["schemas"];
    for field in ["sql", "name", "parallelism", "from_savepoint", "restart"] {
        assert!(
            schemas["Submit"]["properties"][field].is_object(),
            "Submit.{field} is not documented: {}",
            schemas["Submit"]
        );
    }
    assert!(schemas["AlertRule"]["properties"]["condition"].is_object());
    assert!(schemas["RestartSpec"]["properties"]["delay_ms"].is_object());
}

#[test]
fn jobs_read_and_write_files_only_inside_the_allowed_directories() {
    let outside = tempfile::tempdir().unwrap();
    let allowed = outside.path().join("allowed");
    std::fs::create_dir_all(allowed.join("in")).unwrap();
    std::fs::write(allowed.join("in/bids.jsonl"), "{\"auction\": 1}\n").unwrap();
    std::fs::write(
        outside.path().join("secret.jsonl"),
        "{\"auction\": 2, \"TOPSECRET\": 1}\n",
    )
    .unwrap();
    let (server, _dir) = start_server(&["--allow-dir", allowed.to_str().unwrap()]);
    let job = |input: &str, output: &str| {
        let sql = format!(
            "CREATE TABLE src (auction BIGINT) WITH ('connector' = 'filesystem', 'path' = '{input}', 'format' = 'json');
CREATE TABLE dst (auction BIGINT) WITH ('connector' = 'filesystem', 'path' = '{output}', 'format' = 'json');
INSERT INTO dst SELECT auction FROM src;"
        );
        server.call(
            "POST",
            "/api/jobs",
            Some(&serde_json::json!({ "sql": sql }).to_string()),
        )
    };
    let a = allowed.display();
    let o = outside.path().display();
    for (input, output) in [
        (format!("{o}/secret.jsonl"), format!("{a}/out")),
        (format!("{a}/in/bids.jsonl"), format!("{o}/out")),
        // `..` and a symlink out of the allowed directory do not get out.
        (format!("{a}/in/../../secret.jsonl"), format!("{a}/out")),
        (format!("{a}/link/secret.jsonl"), format!("{a}/out")),
        // Looks like a URL but is a local path: checked as the path it is.
        (
            format!("{a}/in/bids.jsonl"),
            format!("{a}/x://../../escaped"),
        ),
        (
            format!("{a}/in/a://../../../secret.jsonl"),
            format!("{a}/out"),
        ),
        (format!("file://{o}/secret.jsonl"), format!("{a}/out")),
        // Whether an outside file exists does not show: refused before anything opens.
        (format!("{o}/missing.jsonl"), format!("{a}/out")),
    ] {
        if input.contains("/link/") {
            std::os::unix::fs::symlink(outside.path(), allowed.join("link")).unwrap();
        }
        let (status, v) = job(&input, &output);
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (403, Some("path_not_allowed")),
            "{input} -> {output}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--allow-dir"),
            "{v}"
        );
        assert!(!v.to_string().contains("TOPSECRET"), "{v}");
    }
    assert!(!outside.path().join("escaped").exists());
    // A source read with schema inference is checked before the file is looked at.
    let sql = format!(
        "CREATE TABLE src WITH ('connector' = 'filesystem', 'path' = '{o}/secret.jsonl', 'format' = 'json');
CREATE TABLE dst (auction BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO dst SELECT auction FROM src;"
    );
    let body = serde_json::json!({ "sql": sql }).to_string();
    let (status, v) = server.call("POST", "/api/jobs", Some(&body));
    assert_eq!(status, 403, "{v}");
    assert!(!v.to_string().contains("TOPSECRET"), "{v}");
    // Remote URLs are not local files: the filesystem connector says so.
    for input in ["s3://bucket/bids.jsonl", "a://../../etc/hostname"] {
        let (status, v) = job(input, &format!("{a}/out"));
        assert_eq!(status, 400, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("local files only")),
            "{v}"
        );
    }
    // A file:// URL inside is fine.
    let (status, v) = job(&format!("file://{a}/in/bids.jsonl"), &format!("{a}/out"));
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_u64().unwrap();
    server.wait_for(id, "finished", |v| v["status"] != "running");
    let (status, v) = job(&format!("{a}/in/bids.jsonl"), &format!("{a}/out"));
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_u64().unwrap();
    let done = server.wait_for(id, "finished", |v| v["status"] != "running");
    assert_eq!(done["status"], "finished", "{done}");
    assert_eq!(done["sink_records"], 1, "{done}");
    // A savepoint to start from is a path too.
    let body = serde_json::json!({ "sql": BOUNDED, "from_savepoint": o.to_string() }).to_string();
    let (status, v) = server.call("POST", "/api/jobs", Some(&body));
    assert_eq!(status, 403, "{v}");
}

#[test]
fn calls_need_the_token_when_one_is_set() {
    let (server, _dir) = start_server(&["--token", "s3cret"]);
    let body = serde_json::json!({ "sql": BOUNDED }).to_string();
    let (status, v) = server.call("POST", "/api/jobs", Some(&body));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{v}"
    );
    // Reading needs it too.
    assert_eq!(server.call("GET", "/api/jobs", None).0, 401);
    let (status, text) = HttpUrl::parse(&server.url)
        .unwrap()
        .request(
            "POST",
            "/api/jobs",
            Some(&body),
            &[
                ("Content-Type", "application/json"),
                ("Authorization", "Bearer s3cret"),
            ],
        )
        .unwrap();
    assert_eq!(status, 201, "{text}");
    // Beyond loopback without a token, the server refuses to start.
    let out = Command::new(BIN)
        .args(["server", "--bind", "0.0.0.0:0"])
        .env_remove("SLUICE_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
}

#[test]
fn running_jobs_come_back_after_the_server_restarts() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let allow = ["--allow-dir", files.path().to_str().unwrap()];
    // A bounded, paced input (18 400 bids over about 9 s) into files published at
    // checkpoints: killed with the server and brought back from its latest checkpoint,
    // the job still writes every bid exactly once.
    let job = |out: &str, paced: bool| {
        format!(
            "SET 'execution.checkpointing.interval' = '100ms';
CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '20000'{});
CREATE TABLE sink (auction BIGINT, bidder BIGINT, price BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');
INSERT INTO sink SELECT auction, bidder, price FROM bid;",
            if paced { ", 'rate-limit' = '2000'" } else { "" },
            files.path().join(out).display()
        )
    };
    let id = {
        let server = start_server_in(data.path(), &allow);
        let (status, v) = server.call(
            "POST",
            "/api/jobs",
            Some(
                &serde_json::json!({ "sql": job("survivor", true), "name": "survivor" })
                    .to_string(),
            ),
        );
        assert_eq!(status, 201, "{v}");
        let (_, b) = server.call(
            "POST",
            "/api/jobs",
            Some(&serde_json::json!({ "sql": BOUNDED, "name": "done" }).to_string()),
        );
        let id = v["id"].as_u64().unwrap();
        server.wait_for(id, "checkpoints", |v| {
            v["checkpoints"]["completed"].as_u64().unwrap_or(0) > 2
        });
        server.wait_for(b["id"].as_u64().unwrap(), "finished", |v| {
            v["status"] == "finished"
        });
        id
        // The server is killed here (SIGKILL), the job with it.
    };
    let killed_with = crate::support::committed_lines(&files.path().join("survivor")).len();
    // Rows were published before the kill: a restart from scratch would repeat them.
    assert!(
        killed_with > 0 && killed_with < 18_400,
        "killed mid-stream ({killed_with} rows written)"
    );
    let server = start_server_in(data.path(), &allow);
    let (_, list) = server.call("GET", "/api/jobs", None);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["survivor"], "only the running job comes back");
    server.wait_for(id, "finished", |v| v["status"] == "finished");
    // A new job gets a new id; run at full speed, it is the answer to compare with.
    let (_, n) = server.call(
        "POST",
        "/api/jobs",
        Some(&serde_json::json!({ "sql": job("whole", false), "name": "whole" }).to_string()),
    );
    let whole_id = n["id"].as_u64().unwrap();
    assert_eq!(whole_id, id + 2, "{n}");
    server.wait_for(whole_id, "finished", |v| v["status"] == "finished");
    let whole = crate::support::committed_lines(&files.path().join("whole"));
    assert_eq!(whole.len(), 18_400, "46 of every 50 events are bids");
    let survivor = crate::support::committed_lines(&files.path().join("survivor"));
    assert_eq!(
        survivor.len(),
        whole.len(),
        "no row lost or repeated across the restart"
    );
    assert!(
        survivor == whole,
        "the restarted job's output is not the whole answer"
    );
}

#[test]
fn the_server_keeps_what_it_acknowledged_through_damaged_files_and_failed_restores() {
    use std::os::unix::fs::PermissionsExt as _;
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let f = files.path();
    for d in ["in", "in2"] {
        std::fs::create_dir_all(f.join(d)).unwrap();
        let rows: String = (0..1000).map(|i| format!("{{\"x\": {i}}}\n")).collect();
        std::fs::write(f.join(d).join("rows.jsonl"), rows).unwrap();
    }
    let job = |dir: &str| {
        format!(
            "CREATE TABLE src (x BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json', 'rows-per-second' = '20');
CREATE TABLE dst (x BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO dst SELECT x FROM src;",
            f.join(dir).join("rows.jsonl").display()
        )
    };
    let args = ["--allow-dir", f.to_str().unwrap()];
    {
        let server = start_server_in(data.path(), &args);
        let retried = serde_json::json!({
            "sql": job("in"), "name": "retried",
            "restart": {"strategy": "fixed-delay", "attempts": 1000, "delay_ms": 100}
        });
        let (status, v) = server.call("POST", "/api/jobs", Some(&retried.to_string()));
        assert_eq!((status, v["id"].as_u64()), (201, Some(1)), "{v}");
        let plain = serde_json::json!({ "sql": job("in2"), "name": "plain" });
        let (status, v) = server.call("POST", "/api/jobs", Some(&plain.to_string()));
        assert_eq!((status, v["id"].as_u64()), (201, Some(2)), "{v}");
        let rule = serde_json::json!({
            "name": "through-the-api", "condition": {"type": "job_failed"},
            "webhook": {"url": "http://127.0.0.1:9/hook"}
        });
        let (status, v) = server.call("POST", "/api/alerts/rules", Some(&rule.to_string()));
        assert_eq!(status, 201, "{v}");
        for id in [1, 2] {
            server.wait_for(id, "rows", |v| {
                v["source_records"].as_u64().unwrap_or(0) > 0
            });
        }
        // Job files hold the SQL with whatever secrets it has: the server's user's only.
        let mode = std::fs::metadata(data.path().join("jobs/1.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Killed here.
    }
    // A damaged job file, and both inputs gone for now.
    std::fs::write(data.path().join("jobs/50.json"), "").unwrap();
    std::fs::rename(f.join("in"), f.join("in.moved")).unwrap();
    std::fs::remove_file(f.join("in2/rows.jsonl")).unwrap();
    let server = start_server_in(data.path(), &args);
    let (_, alerts) = server.call("GET", "/api/alerts", None);
    assert!(
        alerts["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "through-the-api"),
        "{alerts}"
    );
    // The job without a restart strategy is recorded as failed, its definition whole.
    let start = Instant::now();
    let stored = loop {
        let text = std::fs::read_to_string(data.path().join("jobs/2.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if v["status"] == "failed" {
            break v;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(stored["sql"].as_str().unwrap().contains("in2"), "{stored}");
    assert!(stored["error"].as_str().is_some(), "{stored}");
    // The other keeps trying as its strategy says, and comes back with its input.
    std::thread::sleep(Duration::from_millis(500));
    let (status, _) = server.call("GET", "/api/jobs/1", None);
    assert_eq!(status, 404);
    std::fs::rename(f.join("in.moved"), f.join("in")).unwrap();
    let start = Instant::now();
    loop {
        let (status, v) = server.call("GET", "/api/jobs/1", None);
        if status == 200 && v["source_records"].as_u64().unwrap_or(0) > 0 {
            assert_eq!(v["status"], "running", "{v}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never back: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A new job does not take the damaged file's id.
    let (_, n) = server.call(
        "POST",
        "/api/jobs",
        Some(&serde_json::json!({ "sql": BOUNDED }).to_string()),
    );
    assert_eq!(n["id"].as_u64(), Some(51), "{n}");
    assert_eq!(
        std::fs::read_to_string(data.path().join("jobs/50.json")).unwrap(),
        ""
    );
}

#[test]
fn with_a_token_nothing_is_open_and_secrets_never_show() {
    let (server, _dir) = start_server(&["--token", "s3cret"]);
    let call = |method: &str, path: &str, body: Option<&str>, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let (status, text) = HttpUrl::parse(&server.url)
            .unwrap()
            .request(method, path, body, &headers)
            .unwrap();
        (status, text)
    };
    for path in [
        "/api/jobs",
        "/api/alerts",
        "/metrics",
        "/api/openapi.json",
        "/api/jobs/1/logs",
    ] {
        assert_eq!(call("GET", path, None, None).0, 401, "{path}");
        assert_eq!(call("GET", path, None, Some("s3creT")).0, 401, "{path}");
    }
    // The dashboard's pages hold no data: they load, and ask the API with the token.
    assert_eq!(call("GET", "/", None, None).0, 200);
    // (The Kafka table is declared, not used: nothing connects.)
    let sql =
        "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '10');
CREATE TABLE out (auction BIGINT) WITH ('connector' = 'kafka', 'topic' = 'o',
  'properties.bootstrap.servers' = '127.0.0.1:1', 'format' = 'json',
  'properties.security.protocol' = 'SASL_PLAINTEXT', 'properties.sasl.mechanism' = 'PLAIN',
  'properties.sasl.username' = 'u', 'properties.sasl.password' = 'hunter2');
CREATE TABLE sink (auction BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO sink SELECT auction FROM bid;";
    let body = serde_json::json!({ "sql": sql }).to_string();
    let (status, text) = call("POST", "/api/jobs", Some(&body), Some("s3cret"));
    assert_eq!(status, 201, "{text}");
    let (status, detail) = call("GET", "/api/jobs/1", None, Some("s3cret"));
    assert_eq!(status, 200, "{detail}");
    assert!(!detail.contains("hunter2"), "{detail}");
    assert!(
        detail.contains("'properties.sasl.password' = '******'"),
        "{detail}"
    );
    assert!(
        detail.contains("'properties.sasl.username' = 'u'"),
        "{detail}"
    );
}

#[test]
fn a_job_stops_with_a_savepoint_and_a_new_one_starts_from_it() {
    let files = tempfile::tempdir().unwrap();
    let (server, _dir) = start_server(&["--allow-dir", files.path().to_str().unwrap()]);
    // A bounded, paced input (18 400 bids over about 9 s) into files published at
    // checkpoints: what the job stopped with a savepoint wrote and what the job started
    // from it writes are, together, every bid exactly once.
    let job = |out: &str| {
        format!(
            "SET 'execution.checkpointing.interval' = '200ms';
CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '20000', 'rate-limit' = '2000');
CREATE TABLE sink (auction BIGINT, bidder BIGINT, price BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');
INSERT INTO sink SELECT auction, bidder, price FROM bid;",
            files.path().join(out).display()
        )
    };
    let (status, v) = server.call(
        "POST",
        "/api/jobs",
        Some(&serde_json::json!({ "sql": job("first"), "name": "first" }).to_string()),
    );
    assert_eq!(status, 201, "{v}");
    let first = v["id"].as_u64().unwrap();
    server.wait_for(first, "rows", |v| {
        v["source_records"].as_u64().unwrap_or(0) > 2_000
    });
    let (status, v) = server.call(
        "POST",
        &format!("/api/jobs/{first}/savepoint"),
        Some("{\"stop\": \"yes\"}"),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    let out = server.cli(&["savepoint", &first.to_string(), "--stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let location = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(std::path::Path::new(&location).is_dir(), "{location}");
    let stopped = server.wait_for(first, "stopped", |v| v["status"] == "stopped");
    assert_eq!(stopped["status"], "stopped");
    let (_, history) = server.call("GET", &format!("/api/jobs/{first}/checkpoints"), None);
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "savepoint"
                && c["status"] == "completed"
                && c["location"] == location.as_str()),
        "{history}"
    );
    let before = crate::support::committed_lines(&files.path().join("first"));
    assert!(
        !before.is_empty() && before.len() < 18_400,
        "stopped mid-stream: {} rows before the savepoint",
        before.len()
    );
    // A new job from the savepoint goes on from there, to the end of the input.
    let (status, v) = server.call(
        "POST",
        "/api/jobs",
        Some(
            &serde_json::json!({ "sql": job("second"), "name": "second", "from_savepoint": location })
                .to_string(),
        ),
    );
    assert_eq!(status, 201, "{v}");
    let second = v["id"].as_u64().unwrap();
    server.wait_for(second, "finished", |v| v["status"] == "finished");
    let (status, v) = server.call("POST", &format!("/api/jobs/{first}/savepoint"), None);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("not_running")),
        "{v}"
    );
    // The answer without a stop: the same bounded input at full speed.
    let (_, v) = server.call(
        "POST",
        "/api/jobs",
        Some(
            &serde_json::json!({ "sql": job("whole").replace(", 'rate-limit' = '2000'", ""), "name": "whole" })
                .to_string(),
        ),
    );
    let whole_id = v["id"].as_u64().unwrap();
    server.wait_for(whole_id, "finished", |v| v["status"] == "finished");
    let whole = crate::support::committed_lines(&files.path().join("whole"));
    assert_eq!(whole.len(), 18_400, "46 of every 50 events are bids");
    let mut both = before;
    both.extend(crate::support::committed_lines(
        &files.path().join("second"),
    ));
    both.sort();
    assert_eq!(
        both.len(),
        whole.len(),
        "no row lost or repeated across the savepoint"
    );
    assert!(
        both == whole,
        "the two runs together are not the whole answer"
    );
}

#[test]
fn a_failing_job_restarts_as_its_strategy_says_and_keeps_its_failures() {
    let (server, _dir) = start_server(&[]);
    let body = serde_json::json!({
        "sql": FAILING,
        "name": "flaky",
        "restart": { "strategy": "fixed-delay", "attempts": 2, "delay_ms": 10 },
    });
    let (status, v) = server.call("POST", "/api/jobs", Some(&body.to_string()));
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_u64().unwrap();
    let failed = server.wait_for(id, "failed", |v| v["status"] == "failed");
    assert_eq!(failed["restarts"], 2, "{failed}");
    let failures = failed["failures"].as_array().unwrap();
    let restarted: Vec<bool> = failures
        .iter()
        .map(|f| f["restarted"].as_bool().unwrap())
        .collect();
    assert_eq!(restarted, [true, true, false], "{failed}");
    assert!(failures.iter().all(|f| {
        f["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("division by zero")
    }));
    // Extreme but valid numbers: the delays saturate at their cap, and the job still
    // fails for good after its attempts (it once panicked the supervisor at the first
    // failure and showed as running forever).
    let body = serde_json::json!({
        "sql": FAILING,
        "name": "extreme",
        "restart": { "strategy": "exponential-delay", "multiplier": 1e300, "attempts": 2,
                     "delay_ms": 5, "max_delay_ms": 20 },
    });
    let (status, v) = server.call("POST", "/api/jobs", Some(&body.to_string()));
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_u64().unwrap();
    let failed = server.wait_for(id, "failed", |v| v["status"] == "failed");
    assert_eq!(failed["restarts"], 2, "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("division by zero"),
        "{failed}"
    );
    let bad = serde_json::json!({ "sql": BOUNDED, "restart": { "strategy": "sometimes" } });
    let (status, v) = server.call("POST", "/api/jobs", Some(&bad.to_string()));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
}

/// The body of one HTTP request read from `conn` (as long as its Content-Length says),
/// or `None` when the connection ends first.
fn read_request_body(conn: &mut impl std::io::Read) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return Some(body.to_string());
            }
        }
    }
}

/// A webhook receiver: refuses the first notification (500), takes the rest, keeps them.
struct Receiver {
    url: String,
    taken: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn webhook_receiver() -> Receiver {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let taken = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (t, r) = (
        std::sync::Arc::clone(&taken),
        std::sync::Arc::clone(&requests),
    );
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let Some(body) = read_request_body(&mut conn) else {
                continue;
            };
            let first = r.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            let status = if first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            if !first {
                t.lock().unwrap().push(serde_json::from_str(&body).unwrap());
            }
            let _ = conn.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    Receiver {
        url,
        taken,
        requests,
    }
}

#[test]
fn alerts_fire_and_resolve_once_each_at_a_webhook_with_retries() {
    let hook = webhook_receiver();
    let dir = tempfile::tempdir().unwrap();
    // A rule from the configuration file: more than 0 restarts within 4 s.
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        serde_json::json!([{
            "name": "restarting",
            "condition": {"type": "restarts", "more_than": 0, "within_ms": 4000},
            "job": "flaky",
            "webhook": {"url": hook.url}
        }])
        .to_string(),
    )
    .unwrap();
    // A bad rules file stops the server at start-up, with the reason.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"[{"name": "x", "condition": {"type": "latency_p99", "above_ms": 1}, "webhook": {"url": "slack.example/x"}}]"#).unwrap();
    let out = Command::new(BIN)
        .args([
            "server",
            "--bind",
            "127.0.0.1:0",
            "--alerts",
            bad.to_str().unwrap(),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("unused"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("webhook"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let data = dir.path().join("data");
    let server = start_server_in(
        &data,
        &[
            "--alerts",
            rules.to_str().unwrap(),
            "--alert-interval",
            "200ms",
        ],
    );
    // A rule through the API, in Slack's format: the job failed.
    let rule = serde_json::json!({
        "name": "failed",
        "condition": {"type": "job_failed"},
        "job": "flaky",
        "webhook": {"url": hook.url, "format": "slack"}
    });
    let (status, v) = server.call("POST", "/api/alerts/rules", Some(&rule.to_string()));
    assert_eq!(status, 201, "{v}");
    let (status, v) = server.call("POST", "/api/alerts/rules", Some(&rule.to_string()));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("bad_rule")),
        "{v}"
    );
    let (status, v) = server.call(
        "POST",
        "/api/alerts/rules",
        Some(r#"{"name": "y", "condition": {"type": "nope"}, "webhook": {"url": "http://a:1/"}}"#),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );

    // The job fails, restarts once, fails for good.
    let submit = serde_json::json!({
        "sql": FAILING,
        "name": "flaky",
        "restart": {"strategy": "fixed-delay", "attempts": 1, "delay_ms": 200}
    });
    let (status, v) = server.call("POST", "/api/jobs", Some(&submit.to_string()));
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_u64().unwrap();
    let failed = server.wait_for(id, "failed", |v| v["status"] == "failed");
    assert_eq!(failed["restarts"], 1, "{failed}");

    let got = |rule: &str, status: &str| {
        hook.taken
            .lock()
            .unwrap()
            .iter()
            .filter(|n| match n.get("text") {
                // Slack's format: text only.
                Some(t) => {
                    let t = t.as_str().unwrap();
                    t.contains(&format!("`{rule}`")) && t.contains(&status.to_uppercase())
                }
                None => n["rule"] == rule && n["status"] == status,
            })
            .count()
    };
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "never got {what}: {:?}",
                hook.taken.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("both alerts firing", &|| {
        got("restarting", "firing") == 1 && got("failed", "firing") == 1
    });
    // Firing alerts show in the API and the job's detail.
    let (_, detail) = server.call("GET", &format!("/api/jobs/{id}"), None);
    assert!(
        detail["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["rule"] == "failed" && a["state"] == "firing"),
        "{detail}"
    );
    // The restarts leave the 4 s window: resolved.
    wait("the restarts alert resolved", &|| {
        got("restarting", "resolved") == 1
    });
    // Deleting a rule resolves its firing alert.
    let (status, v) = server.call("DELETE", "/api/alerts/rules/failed", None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        server.call("DELETE", "/api/alerts/rules/failed", None).0,
        404
    );
    wait("the failed alert resolved", &|| {
        got("failed", "resolved") == 1
    });
    // Many more evaluations: nothing is sent twice.
    std::thread::sleep(Duration::from_millis(1500));
    for (rule, status) in [
        ("restarting", "firing"),
        ("restarting", "resolved"),
        ("failed", "firing"),
        ("failed", "resolved"),
    ] {
        assert_eq!(
            got(rule, status),
            1,
            "{rule} {status}: {:?}",
            hook.taken.lock().unwrap()
        );
    }
    // The refused first attempt was retried: one more request than notifications taken.
    let taken = hook.taken.lock().unwrap().len();
    assert_eq!(taken, 4);
    assert_eq!(
        hook.requests.load(std::sync::atomic::Ordering::SeqCst),
        taken + 1
    );
    let (_, alerts) = server.call("GET", "/api/alerts", None);
    let deliveries = alerts["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 4, "{alerts}");
    assert!(
        deliveries.iter().all(|d| d["delivered"] == true),
        "{alerts}"
    );
    assert!(deliveries.iter().any(|d| d["attempts"] == 2), "{alerts}");
    // The firing and resolved messages of an alert share its id.
    let ids: Vec<_> = hook
        .taken
        .lock()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str().map(String::from))
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1]);
    assert!(alerts["active"].as_array().unwrap().is_empty(), "{alerts}");
    // The history: each alert fired and resolved, with its times, in order.
    let events = |alerts: &serde_json::Value| -> Vec<(String, String)> {
        alerts["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["rule"].as_str().unwrap().to_string(),
                    e["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let history = events(&alerts);
    assert_eq!(history.len(), 4, "{alerts}");
    for (rule, status) in [
        ("restarting", "firing"),
        ("restarting", "resolved"),
        ("failed", "firing"),
        ("failed", "resolved"),
    ] {
        assert!(
            history.contains(&(rule.to_string(), status.to_string())),
            "{rule} {status}: {alerts}"
        );
    }
    let resolved = alerts["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["rule"] == "restarting" && e["status"] == "resolved")
        .unwrap()
        .clone();
    assert!(
        resolved["resolved_ms"].as_i64().unwrap() >= resolved["fired_ms"].as_i64().unwrap(),
        "{resolved}"
    );
    // It is kept across a restart of the server.
    drop(server);
    let server = start_server_in(&data, &["--alerts", rules.to_str().unwrap()]);
    let (_, again) = server.call("GET", "/api/alerts", None);
    assert_eq!(events(&again), history, "{again}");
}

#[test]
fn webhooks_cannot_smuggle_requests_read_files_or_show_what_they_answer() {
    use std::io::Write;
    // A webhook that refuses with a body that must not show, and far more of it than
    // anyone should read.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            if read_request_body(&mut conn).is_none() {
                continue;
            }
            let len = 64 << 20;
            let _ = conn.write_all(
                format!("HTTP/1.1 500 Oops\r\nContent-Length: {len}\r\nConnection: close\r\n\r\nPRIVATE-ANSWER")
                    .as_bytes(),
            );
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..64 {
                if conn.write_all(&chunk).is_err() {
                    break;
                }
            }
        }
    });
    let outside = tempfile::tempdir().unwrap();
    let (server, _data) = start_server(&["--alert-interval", "100ms"]);
    let add = |hook: serde_json::Value| {
        let rule = serde_json::json!({
            "name": "r", "condition": {"type": "job_failed"}, "job": "boom", "webhook": hook
        });
        server.call("POST", "/api/alerts/rules", Some(&rule.to_string()))
    };
    // Header and request smuggling through the URL.
    for bad in [
        format!("{url}\r\nX-Injected: 1"),
        format!("{url} HTTP/1.1\r\nHost: x\r\n\r\nGET /admin"),
        "http://127.0.0.1:1\n/x".to_string(),
    ] {
        let (status, v) = add(serde_json::json!({ "url": bad }));
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some("bad_rule")),
            "{v}"
        );
    }
    // A certificates file outside the allowed directories is not read.
    let (status, v) = add(serde_json::json!({
        "url": "https://127.0.0.1:1/", "ca_file": outside.path().join("ca.pem")
    }));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("path_not_allowed")),
        "{v}"
    );
    let (status, v) = add(serde_json::json!({ "url": url, "max_attempts": 1 }));
    assert_eq!(status, 201, "{v}");
    let submit = serde_json::json!({ "sql": FAILING, "name": "boom" });
    let (status, v) = server.call("POST", "/api/jobs", Some(&submit.to_string()));
    assert_eq!(status, 201, "{v}");
    let start = Instant::now();
    let delivery = loop {
        let (_, alerts) = server.call("GET", "/api/alerts", None);
        if let Some(d) = alerts["deliveries"].as_array().and_then(|d| d.first()) {
            break d.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no delivery: {alerts}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(delivery["delivered"], false, "{delivery}");
    assert_eq!(delivery["error"], "HTTP 500", "{delivery}");
    assert_eq!(server.call("GET", "/api/jobs", None).0, 200);

    // Public addresses only, when told: this machine is refused at once.
    let (server, _data) = start_server(&["--webhooks-public-only"]);
    let rule = serde_json::json!({
        "name": "r", "condition": {"type": "job_failed"}, "webhook": {"url": url}
    });
    let (status, v) = server.call("POST", "/api/alerts/rules", Some(&rule.to_string()));
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("not a public address"), "{v}");
}

/// A CA and a certificate for 127.0.0.1 signed by it (openssl CLI): (CA PEM, leaf PEM,
/// leaf key PEM).
fn test_certificates(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>, Vec<u8>) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("this test needs the openssl command (Debian's openssl): {e}")
            });
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=sluice test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    (
        dir.join("ca.pem"),
        std::fs::read(dir.join("leaf.pem")).unwrap(),
        std::fs::read(dir.join("leaf.key")).unwrap(),
    )
}

/// An https webhook receiver (rustls) keeping every body it gets.
fn https_receiver(
    cert: &[u8],
    key: &[u8],
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use rustls::pki_types::pem::PemObject as _;
    use std::io::Write;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key).unwrap();
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/hook", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = std::sync::Arc::clone(&got);
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let conn = rustls::ServerConnection::new(std::sync::Arc::clone(&config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            // A client that does not trust the certificate ends the handshake: skip it.
            let Some(body) = read_request_body(&mut tls) else {
                continue;
            };
            g.lock().unwrap().push(body);
            let _ =
                tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (url, got)
}

#[test]
fn alerts_reach_https_webhooks_that_the_given_ca_vouches_for() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(dir.path());
    let (url, got) = https_receiver(&cert, &key);
    let (server, _data) = start_server(&[
        "--alert-interval",
        "100ms",
        "--allow-dir",
        dir.path().to_str().unwrap(),
    ]);
    // Trusting the test CA: delivered. Trusting only the system's CAs: refused.
    for (name, ca_file) in [("trusted", Some(ca.to_str().unwrap())), ("untrusted", None)] {
        let mut hook = serde_json::json!({"url": url, "max_attempts": 1});
        if let Some(ca) = ca_file {
            hook["ca_file"] = ca.into();
        }
        let rule = serde_json::json!({
            "name": name, "condition": {"type": "job_failed"}, "job": "broken", "webhook": hook
        });
        let (status, v) = server.call("POST", "/api/alerts/rules", Some(&rule.to_string()));
        assert_eq!(status, 201, "{v}");
    }
    let (status, v) = server.call(
        "POST",
        "/api/jobs",
        Some(&serde_json::json!({ "sql": FAILING, "name": "broken" }).to_string()),
    );
    assert_eq!(status, 201, "{v}");
    let start = Instant::now();
    let deliveries = loop {
        let (_, alerts) = server.call("GET", "/api/alerts", None);
        let d = alerts["deliveries"].as_array().unwrap().clone();
        if d.len() == 2 {
            break d;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{alerts}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let outcome = |rule: &str| {
        deliveries
            .iter()
            .find(|d| d["notification"]["rule"] == rule)
            .map(|d| d["delivered"].as_bool().unwrap())
    };
    assert_eq!(outcome("trusted"), Some(true), "{deliveries:?}");
    assert_eq!(outcome("untrusted"), Some(false), "{deliveries:?}");
    let bodies = got.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let n: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(
        (n["rule"].as_str(), n["status"].as_str()),
        (Some("trusted"), Some("firing"))
    );
}

/// Deep expressions do not take the server down: the deepest a script may hold runs to the
/// end, deeper ones (a chain of 300 additions, 20 000 ORs) are refused with a 400 saying
/// why, and the server answers on.
#[test]
fn deep_or_huge_sql_is_refused_and_the_server_lives_on() {
    let (server, _dir) = start_server(&[]);
    let job = |expr: String| {
        format!(
            "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '2000');
             CREATE TABLE sink (s BIGINT) WITH ('connector' = 'blackhole');
             INSERT INTO sink SELECT {expr} FROM bid;"
        )
    };
    let submit = |sql: String| {
        server.call(
            "POST",
            "/api/jobs",
            Some(&serde_json::json!({ "sql": sql }).to_string()),
        )
    };
    for deeper in [
        vec!["price"; 300].join(" + "),
        format!(
            "CASE WHEN {} THEN 1 ELSE 0 END",
            vec!["price = 1"; 20_000].join(" OR ")
        ),
    ] {
        let (status, v) = submit(job(deeper));
        assert_eq!(status, 400, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("more than 250 operators")),
            "{v}"
        );
    }
    let (status, v) = submit(job(vec!["price"; 251].join(" + ")));
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_u64().unwrap();
    server.wait_for(id, "finished", |v| v["status"] == "finished");
    let (status, _) = server.call("GET", "/api/jobs", None);
    assert_eq!(status, 200);
}

#[test]
fn a_huge_bad_record_is_cut_in_the_logs_and_job_names_are_unique() {
    let files = tempfile::tempdir().unwrap();
    let input = files.path().join("in.jsonl");
    let huge = format!("{{\"x\": {}\n", "9".repeat(3 << 20));
    std::fs::write(&input, format!("{{\"x\": 1}}\n{huge}{{\"x\": 2}}\n")).unwrap();
    let (server, _dir) = start_server(&["--allow-dir", files.path().to_str().unwrap()]);
    let sql = format!(
        "CREATE TABLE src (x BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');
CREATE TABLE dst (x BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO dst SELECT x FROM src;",
        input.display()
    );
    let body = serde_json::json!({ "sql": sql, "name": "big" }).to_string();
    let (status, v) = server.call("POST", "/api/jobs", Some(&body));
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_u64().unwrap();
    let done = server.wait_for(id, "finished", |v| v["status"] != "running");
    assert_eq!(done["sink_records"], 2, "{done}");
    let (status, logs) = server.call("GET", &format!("/api/jobs/{id}/logs"), None);
    assert_eq!(status, 200);
    let text = logs.to_string();
    assert!(
        text.contains("dead letter") && text.contains("bytes more"),
        "{}",
        &text[..text.len().min(2000)]
    );
    assert!(text.len() < 64 << 10, "{} bytes of logs", text.len());
    // Another job of the same name would share its logs, consumer group and
    // transactional ids: refused.
    let (status, v) = server.call("POST", "/api/jobs", Some(&body));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("name_taken")),
        "{v}"
    );
}

/// Cancel is Flink's cancel, not a drain: the job stops where it is and open windows
/// are dropped, not written as if they were complete.
#[test]
fn cancel_stops_a_job_where_it_is_without_flushing_open_windows() {
    let files = tempfile::tempdir().unwrap();
    let out = files.path().join("out");
    let (server, _dir) = start_server(&["--allow-dir", files.path().to_str().unwrap()]);
    // A day-long window over a paced generator: it never closes while the job runs.
    let sql = format!(
        "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'rate-limit' = '2000');
CREATE TABLE sink (n BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');
INSERT INTO sink SELECT COUNT(*) FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '1' DAY)) GROUP BY window_start, window_end;",
        out.display()
    );
    let (status, v) = server.call(
        "POST",
        "/api/jobs",
        Some(&serde_json::json!({ "sql": sql }).to_string()),
    );
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_u64().unwrap();
    server.wait_for(id, "rows", |v| {
        v["source_records"].as_u64().unwrap_or(0) > 100
    });
    let (status, v) = server.call("POST", &format!("/api/jobs/{id}/cancel"), None);
    assert_eq!(status, 202, "{v}");
    server.wait_for(id, "cancelled", |v| v["status"] == "cancelled");
    // Its tasks go (the job stops reading) and the open window writes nothing.
    let start = std::time::Instant::now();
    let later = loop {
        let (_, a) = server.call("GET", &format!("/api/jobs/{id}"), None);
        std::thread::sleep(Duration::from_millis(300));
        let (_, b) = server.call("GET", &format!("/api/jobs/{id}"), None);
        if a["source_records"] == b["source_records"] {
            break b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still reading: {b}"
        );
    };
    assert_eq!(later["sink_records"], 0, "{later}");
    let written = crate::support::committed_lines(&out).len();
    assert_eq!(written, 0, "a cancelled job wrote its open window");
}

#[test]
fn settings_and_window_shapes_that_would_exhaust_the_server_are_refused() {
    let (server, _dir) = start_server(&[]);
    let submit =
        |body: serde_json::Value| server.call("POST", "/api/jobs", Some(&body.to_string()));
    let bid =
        "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '5');
CREATE TABLE sink (n BIGINT) WITH ('connector' = 'blackhole');";
    for (sql, says) in [
        (
            format!(
                "SET 'sluice.batch.max-rows' = '35184372088832';\n{bid}\nINSERT INTO sink SELECT auction FROM bid;"
            ),
            "from 1 to",
        ),
        (
            format!(
                "SET 'execution.checkpointing.interval' = '100000000 d';\n{bid}\nINSERT INTO sink SELECT auction FROM bid;"
            ),
            "at most a year",
        ),
        (
            format!(
                "{bid}\nINSERT INTO sink SELECT COUNT(*) FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '0.001' SECOND, INTERVAL '1' DAY)) GROUP BY window_start, window_end;"
            ),
            "86400000 windows",
        ),
    ] {
        let (status, v) = submit(serde_json::json!({ "sql": sql }));
        assert_eq!(status, 400, "{v}");
        assert!(v.to_string().contains(says), "{says}: {v}");
    }
    let (status, v) =
        submit(serde_json::json!({ "sql": BOUNDED, "parallelism": 1_000_000_000u64 }));
    assert_eq!(status, 400, "{v}");
}

#[test]
fn connections_that_send_nothing_are_closed_and_do_not_crowd_out_others() {
    use std::io::{Read, Write};
    let (server, _dir) = start_server(&["--max-connections", "8", "--header-timeout", "1s"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    // Three times the limit, each with half a request.
    let mut held: Vec<std::net::TcpStream> = (0..24)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            c.write_all(b"GET /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .unwrap();
            c
        })
        .collect();
    // A whole request is answered once the half-sent ones have been let go.
    let (status, v) = server.call("GET", "/api/jobs", None);
    assert_eq!(status, 200, "{v}");
    // Every half-sent request was closed by the server.
    for c in &mut held {
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = Vec::new();
        let closed = c.read_to_end(&mut buf);
        assert!(closed.is_ok(), "still open: {closed:?}");
        let answer = String::from_utf8_lossy(&buf);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
    }
}

#[test]
fn every_error_answer_of_the_api_is_json_and_bodyless_calls_need_no_type() {
    use std::io::{Read, Write};
    let (server, _dir) = start_server(&[]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let raw = |request: &str| {
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        conn.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        answer
    };
    for (request, status, code) in [
        // The framework's own refusals: a query string that does not parse, a method
        // not served.
        (
            "GET /api/jobs/1/logs?limit=1&limit=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            "400",
            "bad_request",
        ),
        (
            "TRACE /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            "405",
            "method_not_allowed",
        ),
        // A call without a body needs no content type (and a missing job is a 404).
        (
            "POST /api/jobs/7/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "404",
            "not_found",
        ),
        // An empty form post still is not JSON.
        (
            "POST /api/jobs/7/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "415",
            "json_required",
        ),
    ] {
        let answer = raw(request);
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{answer}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{answer}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], code, "{answer}");
    }
}

/// One raw HTTP/1.1 request (headers as given, `Host` included): its status code.
fn raw_status(url: &str, request: &str) -> u16 {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

/// A page the operator opens cannot drive the server: a form post (not JSON) is refused,
/// a JSON call from another origin is refused, and a name other than loopback's (DNS
/// rebinding) gets nothing; the same calls from the server's own origin work.
#[test]
fn web_pages_of_other_sites_cannot_drive_the_server() {
    let (server, _dir) = start_server(&[]);
    let addr = server
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let body = serde_json::json!({ "sql": BOUNDED }).to_string();
    let post = |host: &str, content_type: &str, origin: Option<&str>| {
        let origin = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        raw_status(
            &server.url,
            &format!(
                "POST /api/jobs HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n{origin}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    assert_eq!(post(&addr, "text/plain", None), 415, "a form post");
    assert_eq!(
        post(&addr, "application/json", Some("http://evil.example")),
        403,
        "another origin"
    );
    assert_eq!(
        post(
            "evil.example:80",
            "application/json",
            Some("http://evil.example:80")
        ),
        403,
        "a rebound name"
    );
    let get = |host: &str| {
        raw_status(
            &server.url,
            &format!("GET /api/jobs HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    };
    assert_eq!(get("evil.example"), 403, "a rebound name reads nothing");
    assert_eq!(get(&addr), 200);
    assert_eq!(
        post(&addr, "application/json", Some(&format!("http://{addr}"))),
        201,
        "the dashboard's own origin"
    );
}

/// A job cannot make the Kafka client load native code, and the files Kafka properties
/// name are checked against the sandbox like any path.
#[test]
fn kafka_properties_cannot_load_code_or_read_outside_the_sandbox() {
    let (server, _dir) = start_server(&[]);
    let submit = |sql: &str| {
        server.call(
            "POST",
            "/api/jobs",
            Some(&serde_json::json!({ "sql": sql }).to_string()),
        )
    };
    let (status, v) = submit(
        "CREATE TABLE t (x BIGINT) WITH ('connector' = 'kafka', 'topic' = 't',
           'properties.bootstrap.servers' = '127.0.0.1:1', 'format' = 'json',
           'properties.plugin.library.paths' = '/tmp/evil.so');
         CREATE TABLE sink (x BIGINT) WITH ('connector' = 'blackhole');
         INSERT INTO sink SELECT x FROM t;",
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().is_some_and(
            |m| m.contains("`properties.plugin.library.paths` is not a Kafka client property")
        ),
        "{v}"
    );
    let (status, v) = submit(
        "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '10');
         CREATE TABLE out (auction BIGINT) WITH ('connector' = 'kafka', 'topic' = 'o',
           'properties.bootstrap.servers' = '127.0.0.1:1', 'format' = 'json',
           'properties.ssl.ca.location' = '/etc/hostname');
         INSERT INTO out SELECT auction FROM bid;",
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("path_not_allowed")),
        "{v}"
    );
}

/// A job that grows its state without end fails alone at its memory limit: the server
/// answers, and a job beside it goes on reading. The limit is the server's
/// (`--job-memory-limit`) unless the job sets a lower one.
#[test]
fn a_job_over_its_memory_limit_fails_alone() {
    let (server, _dir) = start_server(&["--job-memory-limit", "2 gb"]);
    let submit = |sql: &str| {
        let body = serde_json::json!({ "sql": sql, "restart": { "strategy": "none" } });
        let (status, v) = server.call("POST", "/api/jobs", Some(&body.to_string()));
        assert_eq!(status, 201, "{v}");
        v["id"].as_u64().unwrap()
    };
    let steady = submit(
        "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'rate-limit' = '2000');
CREATE TABLE sink (a BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO sink SELECT auction FROM bid;",
    );
    // A group per bid (nearly): the aggregate's state grows with every row.
    let hog = submit(
        "SET 'sluice.job.memory-limit' = '48 mb';
CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid');
CREATE TABLE sink (a BIGINT, b BIGINT, p BIGINT, n BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO sink SELECT auction, bidder, price, COUNT(*) FROM bid GROUP BY auction, bidder, price;",
    );
    let (_, v) = server.call("GET", &format!("/api/jobs/{hog}"), None);
    assert_eq!(
        v["memory_limit_bytes"],
        48 << 20,
        "the job's own, lower: {v}"
    );
    let failed = server.wait_for(hog, "failed", |v| v["status"] == "failed");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("above its limit of 48.0 MiB ('sluice.job.memory-limit')"),
        "{failed}"
    );
    // The other job is still running and reading.
    let before = server.wait_for(steady, "running", |v| v["status"] == "running");
    server.wait_for(steady, "more rows", |v| {
        v["source_records"].as_u64() > before["source_records"].as_u64()
    });
    let (_, v) = server.call("GET", &format!("/api/jobs/{steady}"), None);
    assert!(v["memory_bytes"].as_u64().unwrap() > 0, "measured: {v}");
    assert_eq!(v["memory_limit_bytes"], 2u64 << 30, "the server's: {v}");
}

/// A job cancelled while it waits to restart stays down: the pending restart never
/// happens, and its failures stay as they were.
#[test]
fn a_job_cancelled_while_waiting_to_restart_stays_down() {
    let (server, _dir) = start_server(&[]);
    let body = serde_json::json!({
        "sql": FAILING,
        "name": "waiting",
        "restart": { "strategy": "fixed-delay", "attempts": 5, "delay_ms": 1500 },
    });
    let (status, v) = server.call("POST", "/api/jobs", Some(&body.to_string()));
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_u64().unwrap();
    // Its first failure: it now waits 1.5 s to restart.
    let failed_once = server.wait_for(id, "a failure", |v| {
        v["failures"].as_array().is_some_and(|f| !f.is_empty())
    });
    let (status, v) = server.call("POST", &format!("/api/jobs/{id}/cancel"), None);
    assert_eq!(status, 202, "{v}");
    server.wait_for(id, "cancelled", |v| v["status"] == "cancelled");
    // Well past the delay: still cancelled, never restarted.
    std::thread::sleep(Duration::from_millis(3_000));
    let (_, after) = server.call("GET", &format!("/api/jobs/{id}"), None);
    assert_eq!(after["status"], "cancelled", "{after}");
    assert_eq!(after["restarts"], failed_once["restarts"], "{after}");
    assert_eq!(
        after["failures"].as_array().unwrap().len(),
        failed_once["failures"].as_array().unwrap().len(),
        "no attempt ran after the cancel: {after}"
    );
    assert_eq!(
        after["source_records"], failed_once["source_records"],
        "{after}"
    );
}
