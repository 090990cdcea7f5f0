//! `GET /metrics`: Prometheus text, one series per job, operator and subtask.
//!
//! The samples are read from the jobs' atomics at scrape time into metric families, and
//! the `prometheus` crate's text encoder writes them (format 0.0.4). The series names
//! are an interface: `deploy/grafana/sluice.json` queries them.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::jobs::{JobEntry, JobManager, JobStatus, now_ms};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};
use sluice_runtime::metrics::{JobMetrics, OperatorMetrics, SubtaskMetrics};

/// Prometheus text: one series per job, operator and subtask.
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses((status = 200, description = "Prometheus text exposition (version 0.0.4)", content_type = "text/plain", body = String)))]
pub(crate) async fn prometheus(State(m): State<Arc<JobManager>>) -> impl IntoResponse {
    exposition(&m.all())
}

/// What the metrics of one job are read from: a server's job, or the job of a
/// `sluice run` process.
pub trait MetricsSource {
    /// The job's name (the `job_name` label).
    fn job_name(&self) -> &str;
    /// The running (or last) attempt's metrics.
    fn job_metrics(&self) -> Arc<JobMetrics>;
    /// Whether the job runs now.
    fn running(&self) -> bool;
    /// Restarts after failures so far.
    fn restart_count(&self) -> usize;
}

impl MetricsSource for Arc<JobEntry> {
    fn job_name(&self) -> &str {
        &self.name
    }

    fn job_metrics(&self) -> Arc<JobMetrics> {
        self.metrics()
    }

    fn running(&self) -> bool {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).0 == JobStatus::Running
    }

    fn restart_count(&self) -> usize {
        self.restarts()
    }
}

/// The Prometheus text of `jobs` as an HTTP answer.
pub fn exposition<J: MetricsSource>(jobs: &[J]) -> Response {
    let encoder = TextEncoder::new();
    let mut out = Vec::new();
    match encoder.encode(&families(jobs), &mut out) {
        Ok(()) => (
            StatusCode::OK,
            [("content-type", encoder.format_type().to_string())],
            out,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain".to_string())],
            format!("encoding the metrics failed: {e}").into_bytes(),
        )
            .into_response(),
    }
}

/// The upper bounds (seconds) of the end-to-end latency histogram's buckets (+Inf is
/// added by the encoder): from a millisecond to a minute.
const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

/// A per-subtask series: name, help text, how to read it.
type PerSubtask = (&'static str, &'static str, fn(&SubtaskMetrics) -> f64);

const PER_SUBTASK: [PerSubtask; 9] = [
    (
        "sluice_records_in_total",
        "Records an operator subtask took in.",
        |s| s.records_in.load(Relaxed) as f64,
    ),
    (
        "sluice_records_out_total",
        "Records an operator subtask emitted.",
        |s| s.records_out.load(Relaxed) as f64,
    ),
    (
        "sluice_bytes_in_total",
        "Arrow bytes an operator subtask took in (the rows' in-memory size).",
        |s| s.bytes_in.load(Relaxed) as f64,
    ),
    (
        "sluice_bytes_out_total",
        "Arrow bytes an operator subtask emitted.",
        |s| s.bytes_out.load(Relaxed) as f64,
    ),
    (
        "sluice_busy_seconds_total",
        "Time a task spent handling input (its chained operators and output waits included), on its first operator.",
        |s| s.busy_ns.load(Relaxed) as f64 / 1e9,
    ),
    (
        "sluice_input_queue",
        "Batches waiting in an operator subtask's input channels (channel fill).",
        |s| s.input_queue.load(Relaxed) as f64,
    ),
    (
        "sluice_dead_letters_total",
        "Records sent to the dead-letter output.",
        |s| s.dead_letters.load(Relaxed) as f64,
    ),
    (
        "sluice_late_records_total",
        "Rows that arrived after their windows closed.",
        |s| s.late_records.load(Relaxed) as f64,
    ),
    (
        "sluice_backpressured_seconds_total",
        "Time spent blocked on full output channels.",
        |s| s.backpressured_ns.load(Relaxed) as f64 / 1e9,
    ),
];

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

/// A family being filled: its samples, then (if it has any) into the output.
struct Family {
    family: MetricFamily,
}

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Self {
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        family.set_field_type(kind);
        Self { family }
    }

    fn add(&mut self, pairs: &[(&str, &str)], value: f64) {
        let mut m = proto::Metric::default();
        m.set_label(labels(pairs));
        if self.family.get_field_type() == MetricType::COUNTER {
            let mut c = proto::Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = proto::Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        self.family.mut_metric().push(m);
    }

    fn add_metric(&mut self, m: proto::Metric) {
        self.family.mut_metric().push(m);
    }

    /// Families without samples are left out (the encoder refuses them).
    fn push_to(self, out: &mut Vec<MetricFamily>) {
        if !self.family.get_metric().is_empty() {
            out.push(self.family);
        }
    }
}

/// Every subtask of every operator of job `j`, with its labels' values.
fn subtasks(
    j: &impl MetricsSource,
    mut f: impl FnMut(&str, &OperatorMetrics, &str, &str, &SubtaskMetrics),
) {
    let m = j.job_metrics();
    for o in &m.operators {
        // Chained operators may share a name: the id tells their series apart.
        let id = o.node_id.to_string();
        for (i, s) in o.subtasks.iter().enumerate() {
            f(j.job_name(), o, &id, &i.to_string(), s);
        }
    }
}

/// The metric families of `jobs`, read now.
pub(crate) fn families<J: MetricsSource>(jobs: &[J]) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    for (name, help, read) in PER_SUBTASK {
        let kind = match name.ends_with("_total") {
            true => MetricType::COUNTER,
            false => MetricType::GAUGE,
        };
        let mut f = Family::new(name, help, kind);
        for j in jobs {
            subtasks(j, |job, o, id, i, s| {
                f.add(
                    &[
                        ("job_name", job),
                        ("operator", &o.name),
                        ("operator_id", id),
                        ("subtask", i),
                    ],
                    read(s),
                );
            });
        }
        f.push_to(&mut out);
    }

    let mut watermark = Family::new(
        "sluice_watermark_milliseconds",
        "An operator subtask's event-time watermark.",
        MetricType::GAUGE,
    );
    let mut lag = Family::new(
        "sluice_event_time_lag_seconds",
        "Wall-clock time minus an operator subtask's watermark.",
        MetricType::GAUGE,
    );
    let mut source_lag = Family::new(
        "sluice_source_lag_records",
        "Records between a source subtask's position and the end of its partitions (Kafka consumer lag).",
        MetricType::GAUGE,
    );
    let mut revoked = Family::new(
        "sluice_partitions_revoked_total",
        "Partitions a consumer group took from a source subtask (Kafka group assignment).",
        MetricType::COUNTER,
    );
    let mut handover = Family::new(
        "sluice_last_handover_pause_seconds",
        "How long the last partition a consumer group took from a source subtask waited for its offsets' commit before it was let go (cluster instances).",
        MetricType::GAUGE,
    );
    let now = now_ms();
    for j in jobs {
        let running = j.running();
        subtasks(j, |job, o, id, i, s| {
            let labels = [
                ("job_name", job),
                ("operator", o.name.as_str()),
                ("operator_id", id),
                ("subtask", i),
            ];
            let w = s.watermark.load(Relaxed);
            if w != i64::MIN {
                watermark.add(&labels, w as f64);
                if running {
                    lag.add(&labels, (now - w) as f64 / 1000.0);
                }
            }
            let l = s.source_lag.load(Relaxed);
            if o.is_source && l >= 0 {
                source_lag.add(&labels, l as f64);
            }
            let r = s.partitions_revoked.load(Relaxed);
            if o.is_source && r > 0 {
                revoked.add(&labels, r as f64);
                handover.add(&labels, s.last_handover_ms.load(Relaxed) as f64 / 1000.0);
            }
        });
    }
    watermark.push_to(&mut out);
    lag.push_to(&mut out);
    source_lag.push_to(&mut out);
    revoked.push_to(&mut out);
    handover.push_to(&mut out);

    let mut latency = Family::new(
        "sluice_end_to_end_latency_seconds",
        "True end-to-end latency at a sink (sink time minus ingest time).",
        MetricType::HISTOGRAM,
    );
    for j in jobs {
        for o in j.job_metrics().operators.iter().filter(|o| o.is_sink) {
            let lat = o.latency();
            let mut histogram = proto::Histogram::default();
            histogram.set_sample_count(lat.count);
            histogram.set_sample_sum(lat.sum as f64 / 1e6);
            histogram.set_bucket(
                LATENCY_BUCKETS
                    .iter()
                    .map(|&s| {
                        let mut b = proto::Bucket::default();
                        b.set_upper_bound(s);
                        b.set_cumulative_count(lat.count_at_most((s * 1e6) as u64));
                        b
                    })
                    .collect(),
            );
            let mut m = proto::Metric::default();
            let id = o.node_id.to_string();
            m.set_label(labels(&[
                ("job_name", j.job_name()),
                ("operator", &o.name),
                ("operator_id", &id),
            ]));
            m.set_histogram(histogram);
            latency.add_metric(m);
        }
    }
    latency.push_to(&mut out);

    let mut checkpoints = Family::new(
        "sluice_checkpoints_total",
        "Checkpoints by outcome.",
        MetricType::COUNTER,
    );
    let mut duration = Family::new(
        "sluice_last_checkpoint_duration_seconds",
        "The latest completed checkpoint's duration.",
        MetricType::GAUGE,
    );
    let mut size = Family::new(
        "sluice_last_checkpoint_size_bytes",
        "The latest completed checkpoint's state size.",
        MetricType::GAUGE,
    );
    let mut restarts = Family::new(
        "sluice_restarts_total",
        "Restarts of a job after failures.",
        MetricType::COUNTER,
    );
    let mut running = Family::new(
        "sluice_job_running",
        "Whether a job is running.",
        MetricType::GAUGE,
    );
    for j in jobs {
        let m = j.job_metrics();
        let cp = &m.checkpoints;
        for (outcome, n) in [
            ("completed", cp.completed.load(Relaxed)),
            ("failed", cp.failed.load(Relaxed)),
        ] {
            checkpoints.add(
                &[("job_name", j.job_name()), ("outcome", outcome)],
                n as f64,
            );
        }
        if let Some(c) = cp.latest_completed() {
            duration.add(&[("job_name", j.job_name())], c.duration_ms as f64 / 1000.0);
            size.add(&[("job_name", j.job_name())], c.state_bytes as f64);
        }
        restarts.add(&[("job_name", j.job_name())], j.restart_count() as f64);
        running.add(
            &[("job_name", j.job_name())],
            f64::from(u8::from(j.running())),
        );
    }
    let mut queries = Family::new(
        "sluice_sql_queries",
        "SQL client queries running (each a job of its own, not among the jobs).",
        MetricType::GAUGE,
    );
    queries.add(&[], crate::api::sql_queries_running() as f64);
    for f in [checkpoints, duration, size, restarts, running, queries] {
        f.push_to(&mut out);
    }
    out
}

/// Serves `GET /metrics` alone on `listener`, from what `jobs` gives at each scrape: the
/// job of a `sluice run` process. Read-only; nothing else is answered.
pub async fn serve_metrics<J, F>(listener: tokio::net::TcpListener, jobs: F) -> std::io::Result<()>
where
    J: MetricsSource,
    F: Fn() -> Vec<J> + Clone + Send + Sync + 'static,
{
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let jobs = jobs.clone();
            async move { exposition(&jobs()) }
        }),
    );
    axum::serve(listener, app).await
}
