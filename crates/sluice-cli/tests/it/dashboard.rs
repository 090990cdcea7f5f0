//! The dashboard in a real headless Chromium, driven over WebDriver (chromedriver): submit
//! a job through the page, watch its graph and counts, find a failing job's error with its
//! stack trace in the log finder, cancel a job. Screenshots go to `target/screenshots/`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::connectors::http::HttpUrl;

use crate::server::{FAILING, UNBOUNDED, start_server};

/// The W3C WebDriver element key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver child and one browser session, both ended when dropped.
pub(crate) struct Browser {
    driver: Child,
    http: HttpUrl,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .http
            .request("DELETE", &format!("/session/{}", self.session), None, &[]);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    pub(crate) fn start() -> Browser {
        for bin in ["/usr/bin/chromedriver", "/usr/bin/chromium"] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: install Debian's chromium and chromium-driver \
                 (`apt-get install -y chromium chromium-driver`; scripts/test does)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let http = HttpUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap().keep();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
                         "--window-size=1400,1100", format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let mut b = Browser {
            driver,
            http,
            session: String::new(),
        };
        let v = b.raw("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {v}"))
            .to_string();
        b
    }

    fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let (status, text) = self
            .http
            .request(
                method,
                path,
                body.as_deref(),
                &[("Content-Type", "application/json")],
            )
            .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        assert_eq!(status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.raw(method, &format!("/session/{}{path}", self.session), body)
    }

    pub(crate) fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    pub(crate) fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }

    pub(crate) fn text(&self, css: &str) -> String {
        self.js(&format!(
            "const e = document.querySelector({}); return e ? e.textContent : null;",
            json!(css)
        ))
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Polls `f` until it gives a value (the page updates itself every second).
    pub(crate) fn wait<T>(&self, what: &str, mut f: impl FnMut(&Browser) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if start.elapsed() > Duration::from_secs(60) {
                self.screenshot("timeout");
                panic!("the page never showed {what} (screenshot: target/screenshots/timeout.png)");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn screenshot(&self, name: &str) {
        let png = decode_base64(self.call("GET", "/screenshot", None).as_str().unwrap());
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let n = data.iter().fold(0u32, |acc, &c| (acc << 6) | val(c)) << (6 * (4 - data.len()));
        let take = data.len().saturating_sub(1);
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    out
}

/// A count as the page shows it: `987`, `12.3 K`, `4.56 M`.
fn count(text: &str) -> Option<f64> {
    let t = text.trim();
    let (n, scale) = match t.rsplit_once(' ') {
        Some((n, "K")) => (n, 1e3),
        Some((n, "M")) => (n, 1e6),
        Some((n, "G")) => (n, 1e9),
        _ => (t, 1.0),
    };
    n.parse::<f64>().ok().map(|v| v * scale)
}

/// Nine bids in ten have key 1: one of the two window subtasks gets them.
const SKEWED: &str = "CREATE TABLE bid WITH ('connector' = 'nexmark', 'table' = 'bid', 'rate-limit' = '20000');
CREATE TABLE out (k BIGINT, n BIGINT) WITH ('connector' = 'blackhole');
CREATE VIEW keyed AS SELECT CASE WHEN price % 10 = 7 THEN auction ELSE 1 END AS k, date_time FROM bid;
INSERT INTO out SELECT k, COUNT(*) FROM TABLE(TUMBLE(TABLE keyed, DESCRIPTOR(date_time), INTERVAL '1' SECOND))
GROUP BY k, window_start, window_end;";

#[test]
fn the_dashboard_submits_shows_finds_errors_takes_savepoints_stops_and_cancels_in_a_real_browser() {
    let (server, _dir) = start_server(&[]);
    let browser = Browser::start();
    // An alert rule for the job failing on purpose below (its webhook answers nobody:
    // the history keeps the alert whatever the delivery).
    let (status, v) = server.call(
        "POST",
        "/api/alerts/rules",
        Some(
            &json!({
                "name": "failed",
                "condition": {"type": "job_failed"},
                "webhook": {"url": "http://127.0.0.1:9/hook"}
            })
            .to_string(),
        ),
    );
    assert_eq!(status, 201, "{v}");

    // Submit a job through the page.
    browser.open(&format!("{}/", server.url));
    browser.type_into("#sql", UNBOUNDED);
    browser.type_into("#job-name", "from-the-browser");
    browser.click("#submit");
    let id: u64 = browser.wait("the new job's page", |b| {
        let url = b.call("GET", "/url", None);
        url.as_str()?.rsplit_once("/jobs/")?.1.parse().ok()
    });
    let (_, detail) = server.call("GET", &format!("/api/jobs/{id}"), None);
    assert_eq!(detail["name"], "from-the-browser", "{detail}");

    // Its graph: one box per operator, and the counts rise.
    let nodes = detail["graph"]["nodes"].as_array().unwrap().len();
    assert!(nodes >= 2, "{detail}");
    browser.wait("the graph", |b| {
        (b.js("return document.querySelectorAll('#graph .node').length")
            .as_u64()? as usize
            == nodes)
            .then_some(())
    });
    let first = browser.wait("a source count", |b| count(&b.text("#source-records")));
    browser.wait("the source count rising", |b| {
        count(&b.text("#source-records")).filter(|&n| n > first)
    });
    browser.wait("the sink count rising", |b| {
        count(&b.text("#sink-records")).filter(|&n| n > 0.0)
    });
    assert_eq!(browser.text("#status"), "running");
    let latency = browser.wait("the end-to-end latency", |b| {
        let t = b.text("#latency");
        t.contains("ms").then_some(t)
    });
    assert!(latency.contains('/'), "p50 / p99: {latency}");
    assert!(
        browser.js("return document.body.textContent.includes('sink time − ingest time')") == true,
        "the latency is labelled as end-to-end"
    );
    // The graph's boxes carry live rates.
    browser.wait("a rate in the graph", |b| {
        let t = b.text("#graph");
        (t.contains("/s") && !t.contains("in –/s")).then_some(())
    });
    browser.screenshot("job");

    // Charts over time, from the server's history: a sample a second.
    let samples = (0..300)
        .find_map(|_| {
            let (_, h) = server.call("GET", &format!("/api/jobs/{id}/history"), None);
            let moving = h["samples"]
                .as_array()?
                .iter()
                .filter(|s| s["input_per_s"].as_f64().unwrap_or(0.0) > 0.0)
                .count();
            if moving >= 2 {
                return Some(h);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            None
        })
        .expect("the history never had two samples with input");
    assert_eq!(samples["interval_ms"], 1000, "{samples}");
    assert_eq!(
        samples["operators"].as_array().unwrap().len(),
        samples["samples"][0]["operators"].as_array().unwrap().len(),
        "{samples}"
    );
    browser.wait("the charts drawn", |b| {
        (b.js("return [...document.querySelectorAll('#charts .chart')].filter(c => c.querySelector('polyline')).length")
            .as_u64()?
            >= 4)
            .then_some(())
    });
    for title in [
        "Records per second",
        "End-to-end latency",
        "Event-time lag",
        "Busy per operator",
        "Backpressure per operator",
        "Checkpoint duration",
    ] {
        assert!(
            browser.js(&format!(
                "return !!document.querySelector('#charts .chart[data-chart=\"{title}\"]')"
            )) == true,
            "chart {title}"
        );
    }
    // The input rate chart has a line through several samples.
    browser.wait("a records line of several points", |b| {
        let n = b
            .js("const l = document.querySelector('#charts .chart[data-chart=\"Records per second\"] polyline'); return l ? l.getAttribute('points').trim().split(' ').length : 0")
            .as_u64()?;
        (n >= 2).then_some(())
    });
    browser.js("document.querySelector('#charts').scrollIntoView()");
    browser.screenshot("charts");

    // Per-subtask drill-down: click the source's row, its subtasks appear.
    let source = detail["operators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["is_source"] == true)
        .unwrap()
        .clone();
    let op = source["id"].as_u64().unwrap();
    browser.click(&format!("#operators tr[data-operator=\"{op}\"]"));
    let rows = browser.wait("the subtasks of the source", |b| {
        let n = b
            .js("return document.querySelectorAll('#subtasks tbody tr').length")
            .as_u64()?;
        (n > 0 && !b.text("#subtasks-name").is_empty()).then_some(n)
    });
    assert_eq!(rows, source["parallelism"].as_u64().unwrap());
    // The source's splits, each with its own watermark.
    browser.wait("the source's split with its watermark", |b| {
        let t = b.text("#subtasks tbody tr td.splits");
        (t.contains("split 0: ") && !t.contains("split 0: –")).then_some(())
    });
    browser.wait("a subtask's rate", |b| {
        count(&b.text("#subtasks tbody tr td:nth-child(5)")).filter(|&r| r > 0.0)
    });
    let (status, v) = server.call("GET", &format!("/api/jobs/{id}/operators/{op}"), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["subtasks"].as_array().unwrap().len() as u64, rows, "{v}");
    assert!(v["subtasks"][0]["records_out"].as_u64().unwrap() > 0, "{v}");
    let (status, v) = server.call("GET", &format!("/api/jobs/{id}/operators/999"), None);
    assert_eq!(status, 404, "{v}");
    let (status, v) = server.call("GET", &format!("/api/jobs/{id}/operators/x"), None);
    assert_eq!(status, 400, "{v}");
    browser.js("document.querySelector('#subtasks-section').scrollIntoView()");
    browser.screenshot("subtasks");

    // "Why is it slow?" on a job with a hot key: the panel ranks skew first, with its
    // evidence and what to do.
    let (status, v) = server.call(
        "POST",
        "/api/jobs",
        Some(&json!({ "sql": SKEWED, "name": "skewed", "parallelism": 2 }).to_string()),
    );
    assert_eq!(status, 201, "{v}");
    let skewed = v["id"].as_u64().unwrap();
    browser.open(&format!("{}/jobs/{skewed}", server.url));
    browser.wait("skew ranked first in the diagnosis panel", |b| {
        let kind = b.js("const c = document.querySelector('#diagnosis li.cause'); return c ? c.dataset.kind : ''");
        (kind == "skew").then_some(())
    });
    let panel = browser.text("#diagnosis-section");
    assert!(panel.contains("is skewed: subtask"), "{panel}");
    assert!(panel.contains("What to do:"), "{panel}");
    browser.js("document.querySelector('#diagnosis-section').scrollIntoView()");
    browser.screenshot("diagnosis");
    let (status, _) = server.call("POST", &format!("/api/jobs/{skewed}/cancel"), None);
    assert_eq!(status, 202);
    browser.open(&format!("{}/jobs/{id}", server.url));

    // A job that fails on purpose: the log finder, errors only, shows its stack trace.
    let (status, v) = server.call(
        "POST",
        "/api/jobs",
        Some(&json!({ "sql": FAILING, "name": "fails-on-purpose" }).to_string()),
    );
    assert_eq!(status, 201, "{v}");
    let failing = v["id"].as_u64().unwrap();
    server.wait_for(failing, "failed", |v| v["status"] == "failed");
    browser.open(&format!("{}/jobs/{failing}/logs", server.url));
    browser.wait("the log list", |b| {
        (b.js("return document.querySelectorAll('#logs .log').length")
            .as_u64()?
            > 0)
        .then_some(())
    });
    browser.click("#errors-only");
    let shown = browser.wait("only errors, with a stack trace", |b| {
        let v = b.js(
            "const logs = [...document.querySelectorAll('#logs .log')];
             return { all: logs.length, errors: logs.filter(l => l.classList.contains('ERROR')).length,
                      traces: [...document.querySelectorAll('#logs .log pre.trace')].map(p => p.textContent),
                      text: document.querySelector('#logs').textContent };",
        );
        let all = v["all"].as_u64()?;
        (all > 0 && v["errors"].as_u64()? == all && !v["traces"].as_array()?.is_empty()).then_some(v)
    });
    assert!(
        shown["text"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("division by zero"),
        "{shown}"
    );
    let trace = shown["traces"][0].as_str().unwrap();
    assert!(
        trace.contains("sluice_runtime"),
        "a stack trace through Sluice's frames: {trace}"
    );
    browser.screenshot("logs");
    // The job page lists the failure with its trace too.
    browser.open(&format!("{}/jobs/{failing}", server.url));
    browser.wait("the exception history", |b| {
        b.text("#exceptions")
            .to_lowercase()
            .contains("division by zero")
            .then_some(())
    });
    assert!(
        browser
            .text("#exceptions .trace")
            .contains("sluice_runtime")
    );

    // A savepoint from the first job's page: written where the page says, the job goes on.
    browser.open(&format!("{}/jobs/{id}", server.url));
    browser.wait("the running job", |b| {
        (b.text("#status") == "running").then_some(())
    });
    browser.click("#savepoint");
    let at = browser.wait("the savepoint's location", |b| {
        b.text("#action-result")
            .strip_prefix("savepoint at ")
            .map(str::to_string)
    });
    assert!(
        std::path::Path::new(&at).join("_manifest.json").is_file(),
        "no complete savepoint at {at}"
    );
    let (_, history) = server.call("GET", &format!("/api/jobs/{id}/checkpoints"), None);
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "savepoint"
                && c["status"] == "completed"
                && c["location"] == at.as_str()),
        "{history}"
    );
    assert_eq!(browser.text("#status"), "running");

    // Stop with a savepoint, from the page of another job.
    let (status, v) = server.call(
        "POST",
        "/api/jobs",
        Some(&json!({ "sql": UNBOUNDED, "name": "stopped-from-the-browser" }).to_string()),
    );
    assert_eq!(status, 201, "{v}");
    let stopped = v["id"].as_u64().unwrap();
    browser.open(&format!("{}/jobs/{stopped}", server.url));
    browser.wait("the running job", |b| {
        (b.text("#status") == "running").then_some(())
    });
    browser.click("#stop-savepoint");
    let at = browser.wait("the stop's savepoint", |b| {
        b.text("#action-result")
            .strip_prefix("stopped; savepoint at ")
            .map(str::to_string)
    });
    assert!(
        std::path::Path::new(&at).join("_manifest.json").is_file(),
        "no complete savepoint at {at}"
    );
    browser.wait("the job stopped", |b| {
        (b.text("#status") == "stopped").then_some(())
    });
    assert!(
        browser.js("return document.querySelector('#stop-savepoint').disabled") == true,
        "the buttons of a stopped job are disabled"
    );
    browser.screenshot("stopped");

    // Cancel the first job from its page.
    browser.open(&format!("{}/jobs/{id}", server.url));
    browser.wait("the running job", |b| {
        (b.text("#status") == "running").then_some(())
    });
    browser.click("#cancel");
    browser.wait("the job cancelled", |b| {
        (b.text("#status") == "cancelled").then_some(())
    });
    let (_, detail) = server.call("GET", &format!("/api/jobs/{id}"), None);
    assert_eq!(detail["status"], "cancelled", "{detail}");

    // The overview lists both jobs with their status.
    browser.open(&format!("{}/", server.url));
    browser.wait("both jobs", |b| {
        let t = b.text("#jobs");
        (t.contains("from-the-browser") && t.contains("cancelled") && t.contains("failed"))
            .then_some(())
    });
    // The alert history: the failed job's alert fired.
    browser.wait("the fired alert in the history", |b| {
        let t = b.text("#alert-history");
        (t.contains("fired") && t.contains("fails-on-purpose")).then_some(())
    });
    browser.screenshot("overview");
}
