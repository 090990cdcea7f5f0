//! The web dashboard: three server-rendered pages whose numbers a small script keeps
//! live from the REST API (no Node, no build step; the assets are compiled in).
//!
//! ```text
//!  GET /                  overview: jobs with status and counts, submit a SQL job, lineage
//!  GET /jobs/{id}         a job: graph with live per-operator numbers, latency, checkpoints,
//!                         exceptions, cancel / savepoint / stop with savepoint, and for
//!                         a cluster instance its cluster's instances (host, partitions, lag,
//!                         state size, last rebalance)
//!  GET /jobs/{id}/logs    the log finder: task, level, "errors only", text; stack traces
//!  GET /assets/app.js     the script, GET /assets/style.css the style
//! ```

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// A page: the shared frame around `body`; `init` is the script call that fills it.
fn page(title: &str, body: &str, init: &str) -> Html<String> {
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Sluice</title>
<link rel="stylesheet" href="/assets/style.css">
</head><body>
<header><a class="brand" href="/">Sluice</a><nav><a href="/">Jobs</a><a href="/metrics">Prometheus</a><a href="/api/openapi.json">API</a></nav>
<label class="token">API token <input id="token" type="password" placeholder="when the server needs one"></label></header>
<main>{body}</main>
<script src="/assets/app.js"></script>
<script>{init}</script>
</body></html>"#
    ))
}

async fn overview() -> Html<String> {
    page(
        "Jobs",
        r#"<section><h1>Jobs</h1>
<table id="jobs"><thead><tr><th>Id</th><th>Name</th><th>Status</th><th>Source records</th><th>Sink records</th><th>Restarts</th><th>Submitted</th></tr></thead><tbody></tbody></table>
<p class="empty" id="no-jobs" hidden>No jobs yet: submit one below.</p></section>
<section><h2>Submit a SQL job</h2>
<form id="submit-form">
<textarea id="sql" rows="12" spellcheck="false" placeholder="CREATE TABLE … WITH (…);&#10;INSERT INTO sink SELECT … FROM source;"></textarea>
<div class="row"><label>Name <input id="job-name" placeholder="job-N"></label>
<label>Parallelism <input id="parallelism" type="number" min="1" value="1"></label>
<button id="submit" type="submit">Submit</button></div>
<p class="error" id="submit-error"></p></form></section>
<section><h2>Alerts</h2>
<table id="alerts"><thead><tr><th>Rule</th><th>Job</th><th>State</th><th>Since</th><th>Value</th></tr></thead><tbody></tbody></table>
<p class="hint" id="alert-rules"></p>
<h3>History</h3><p class="hint">Alerts fired and resolved, newest first (the latest 500, kept across restarts).</p>
<table id="alert-history"><thead><tr><th>Event</th><th>Rule</th><th>Job</th><th>Started</th><th>Fired</th><th>Resolved</th><th>Value</th></tr></thead><tbody></tbody></table></section>
<section><h2>Lineage</h2><p class="hint">What each job reads and writes: topic → job → topic.</p>
<table id="lineage"><thead><tr><th>Reads</th><th>Job</th><th>Writes</th></tr></thead><tbody></tbody></table></section>"#,
        "sluice.overview();",
    )
}

fn job_id(id: &str) -> Result<u64, (StatusCode, String)> {
    id.parse()
        .map_err(|_| (StatusCode::NOT_FOUND, format!("no job `{id}`")))
}

async fn job(Path(id): Path<String>) -> Result<Html<String>, (StatusCode, String)> {
    let id = job_id(&id)?;
    Ok(page(
        &format!("Job {id}"),
        &format!(
            r#"<section><h1><span id="job-name">Job {id}</span> <span id="status" class="badge"></span></h1>
<p class="error" id="job-error"></p>
<div class="actions"><button id="savepoint">Savepoint</button><button id="stop-savepoint">Stop with savepoint</button><button id="cancel" class="danger">Cancel</button>
<a href="/jobs/{id}/logs">Logs</a><span id="action-result"></span></div>
<div class="cards">
<div class="card"><div class="label">Source records</div><div class="value" id="source-records">–</div><div class="sub" id="source-rate"></div></div>
<div class="card"><div class="label">Sink records</div><div class="value" id="sink-records">–</div><div class="sub" id="sink-rate"></div></div>
<div class="card"><div class="label">End-to-end latency p50 / p99</div><div class="value" id="latency">–</div><div class="sub">sink time − ingest time</div></div>
<div class="card"><div class="label">Event-time lag</div><div class="value" id="lag">–</div><div class="sub">now − lowest sink watermark</div></div>
<div class="card"><div class="label">Checkpoints</div><div class="value" id="checkpoint-counts">–</div><div class="sub">completed / failed</div></div>
<div class="card"><div class="label">Restarts</div><div class="value" id="restarts">–</div><div class="sub" id="alerts-state"></div></div>
</div></section>
<section id="diagnosis-section"><h2>Why is it slow?</h2><p class="hint">The likely causes over the last 30 seconds, most likely first (<code>sluice diagnose {id}</code>).</p><p id="diagnosis-summary" class="empty">…</p><ol id="diagnosis"></ol></section>
<section><h2>Dataflow</h2><p class="hint">Per operator, live: records in/s → out/s; p99 end-to-end latency at sinks; busy = share of time its task spent handling input (first operator of a task); backpressure = share of time blocked on full output channels; queue = batches waiting at its inputs; lag = Kafka records behind.</p>
<div id="graph-box"><svg id="graph" role="img" aria-label="dataflow graph"></svg></div>
<table id="operators"><thead><tr><th>Operator</th><th>Parallelism</th><th>Records in</th><th>In/s</th><th>Records out</th><th>Out/s</th><th>p50 / p99 latency</th><th>Busy</th><th>Backpressure</th><th>Queue</th><th>Watermark</th><th>Dead letters</th><th>Late</th></tr></thead><tbody></tbody></table>
<p class="hint">Click an operator (in the table or the graph) for its subtasks.</p></section>
<section id="subtasks-section" hidden><h2>Subtasks of <span id="subtasks-name"></span></h2><p class="hint">Each subtask over its last second: skew shows as one subtask far from the others.</p>
<table id="subtasks"><thead><tr><th>Subtask</th><th>Records in</th><th>In/s</th><th>Records out</th><th>Out/s</th><th>Busy</th><th>Backpressure</th><th>Queue</th><th>Watermark</th><th>Kafka lag</th><th>p99 latency</th><th>Dead letters</th><th>Late</th><th>State</th><th>Splits (own watermark)</th></tr></thead><tbody></tbody></table></section>
<section><h2>Over time</h2><p class="hint">The last 15 minutes, a sample a second (<code>GET /api/jobs/{id}/history</code>).</p><div id="charts" class="charts"></div></section>
<section><h2>Reads and writes</h2><p id="lineage"></p></section>
<section id="cluster-section" hidden><h2>Cluster <span id="cluster-name"></span></h2><p id="cluster-state" class="empty"></p><table id="cluster"><thead><tr><th>Instance</th><th>Host</th><th>Subtasks</th><th>Partitions</th><th>Lag</th><th>Keyed tasks</th><th>Task lag</th><th>State</th><th>Last rebalance</th></tr></thead><tbody></tbody></table></section>
<section><h2>Checkpoints</h2><table id="checkpoints"><thead><tr><th>Id</th><th>Kind</th><th>Status</th><th>Triggered</th><th>Duration</th><th>Size</th><th>Location</th></tr></thead><tbody></tbody></table></section>
<section><h2>Exceptions</h2><div id="exceptions"><p class="empty">None.</p></div></section>
<section><h2>Explain</h2><pre id="explain"></pre><details><summary>SQL</summary><pre id="job-sql"></pre></details></section>"#
        ),
        &format!("sluice.job({id});"),
    ))
}

async fn logs(Path(id): Path<String>) -> Result<Html<String>, (StatusCode, String)> {
    let id = job_id(&id)?;
    Ok(page(
        &format!("Logs of job {id}"),
        &format!(
            r#"<section><h1>Logs of <a href="/jobs/{id}" id="job-link">job {id}</a></h1>
<form id="log-filter" class="row">
<label>Task <select id="task"><option value="">all tasks</option></select></label>
<label>Level <select id="level"><option value="">info and above</option><option value="warn">warn and above</option><option value="error">error</option></select></label>
<label class="check"><input type="checkbox" id="errors-only"> Errors only</label>
<label>Text <input id="q" placeholder="find…"></label>
<button type="submit">Search</button></form>
<p class="hint" id="log-count"></p>
<div id="logs"></div></section>"#
        ),
        &format!("sluice.logs({id});"),
    ))
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The dashboard's routes (merged into the API's router).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(overview))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/logs", get(logs))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
