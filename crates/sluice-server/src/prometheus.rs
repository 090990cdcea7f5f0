//! `GET /metrics`: Prometheus text, one series per job, operator and subtask.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::jobs::{JobEntry, JobManager, JobStatus, now_ms};
use axum::extract::State;
use axum::response::IntoResponse;

/// Prometheus text: one series per job, operator and subtask.
pub(crate) async fn prometheus(State(m): State<Arc<JobManager>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        render_prometheus(&m.all()),
    )
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A per-subtask counter series: name, help text, how to read it.
type Counter = (
    &'static str,
    &'static str,
    fn(&sluice_runtime::metrics::SubtaskMetrics) -> f64,
);

pub(crate) fn render_prometheus(jobs: &[Arc<JobEntry>]) -> String {
    let mut out = String::new();
    let counters: [Counter; 9] = [
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
    for (name, help, f) in counters {
        let kind = match name.ends_with("_total") {
            true => "counter",
            false => "gauge",
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for j in jobs {
            for o in &j.metrics().operators {
                for (i, s) in o.subtasks.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{name}{{job=\"{}\",operator=\"{}\",subtask=\"{i}\"}} {}",
                        esc(&j.name),
                        esc(&o.name),
                        f(s)
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_watermark_milliseconds An operator subtask's event-time watermark.\n# TYPE sluice_watermark_milliseconds gauge"
    );
    for j in jobs {
        for o in &j.metrics().operators {
            for (i, s) in o.subtasks.iter().enumerate() {
                let w = s.watermark.load(Relaxed);
                if w != i64::MIN {
                    let _ = writeln!(
                        out,
                        "sluice_watermark_milliseconds{{job=\"{}\",operator=\"{}\",subtask=\"{i}\"}} {w}",
                        esc(&j.name),
                        esc(&o.name)
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_event_time_lag_seconds Wall-clock time minus an operator subtask's watermark.\n# TYPE sluice_event_time_lag_seconds gauge"
    );
    let now = now_ms();
    for j in jobs {
        if j.status.lock().unwrap_or_else(|p| p.into_inner()).0 != JobStatus::Running {
            continue;
        }
        for o in &j.metrics().operators {
            for (i, s) in o.subtasks.iter().enumerate() {
                let w = s.watermark.load(Relaxed);
                if w != i64::MIN {
                    let _ = writeln!(
                        out,
                        "sluice_event_time_lag_seconds{{job=\"{}\",operator=\"{}\",subtask=\"{i}\"}} {}",
                        esc(&j.name),
                        esc(&o.name),
                        (now - w) as f64 / 1000.0
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_source_lag_records Records between a source subtask's position and the end of its partitions (Kafka consumer lag).\n# TYPE sluice_source_lag_records gauge"
    );
    for j in jobs {
        for o in j.metrics().operators.iter().filter(|o| o.is_source) {
            for (i, s) in o.subtasks.iter().enumerate() {
                let lag = s.source_lag.load(Relaxed);
                if lag >= 0 {
                    let _ = writeln!(
                        out,
                        "sluice_source_lag_records{{job=\"{}\",operator=\"{}\",subtask=\"{i}\"}} {lag}",
                        esc(&j.name),
                        esc(&o.name)
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_end_to_end_latency_seconds True end-to-end latency at a sink (sink time minus ingest time).\n# TYPE sluice_end_to_end_latency_seconds summary"
    );
    for j in jobs {
        let m = j.metrics();
        for o in m.operators.iter().filter(|o| o.is_sink) {
            let lat = o.latency();
            let labels = format!("job=\"{}\",operator=\"{}\"", esc(&j.name), esc(&o.name));
            for q in [0.5, 0.95, 0.99] {
                let _ = writeln!(
                    out,
                    "sluice_end_to_end_latency_seconds{{{labels},quantile=\"{q}\"}} {}",
                    lat.quantile(q) as f64 / 1e6
                );
            }
            let _ = writeln!(
                out,
                "sluice_end_to_end_latency_seconds_count{{{labels}}} {}",
                lat.count
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_checkpoints_total Checkpoints by outcome.\n# TYPE sluice_checkpoints_total counter"
    );
    for j in jobs {
        let m = j.metrics();
        let cp = &m.checkpoints;
        for (outcome, n) in [
            ("completed", cp.completed.load(Relaxed)),
            ("failed", cp.failed.load(Relaxed)),
        ] {
            let _ = writeln!(
                out,
                "sluice_checkpoints_total{{job=\"{}\",outcome=\"{outcome}\"}} {n}",
                esc(&j.name)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_last_checkpoint_duration_seconds The latest completed checkpoint's duration.\n# TYPE sluice_last_checkpoint_duration_seconds gauge\n# HELP sluice_last_checkpoint_size_bytes The latest completed checkpoint's state size.\n# TYPE sluice_last_checkpoint_size_bytes gauge"
    );
    for j in jobs {
        if let Some(c) = j.metrics().checkpoints.latest_completed() {
            let name = esc(&j.name);
            let _ = writeln!(
                out,
                "sluice_last_checkpoint_duration_seconds{{job=\"{name}\"}} {}\nsluice_last_checkpoint_size_bytes{{job=\"{name}\"}} {}",
                c.duration_ms as f64 / 1000.0,
                c.state_bytes
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_restarts_total Restarts of a job after failures.\n# TYPE sluice_restarts_total counter"
    );
    for j in jobs {
        let _ = writeln!(
            out,
            "sluice_restarts_total{{job=\"{}\"}} {}",
            esc(&j.name),
            j.restarts()
        );
    }
    let _ = writeln!(
        out,
        "# HELP sluice_job_running Whether a job is running.\n# TYPE sluice_job_running gauge"
    );
    for j in jobs {
        let running = j.status.lock().unwrap_or_else(|p| p.into_inner()).0 == JobStatus::Running;
        let _ = writeln!(
            out,
            "sluice_job_running{{job=\"{}\"}} {}",
            esc(&j.name),
            u8::from(running)
        );
    }
    out
}
