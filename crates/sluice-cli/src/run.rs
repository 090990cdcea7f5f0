//! Pieces of `sluice run`: the signals that stop it, its metrics endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use sluice::runtime::metrics::JobMetrics;

use crate::Current;

/// The job of `sluice run`, for its metrics endpoint.
pub(crate) struct RunJob {
    name: String,
    metrics: Arc<JobMetrics>,
    restarts: usize,
}

impl sluice_server::MetricsSource for RunJob {
    fn job_name(&self) -> &str {
        &self.name
    }

    fn job_metrics(&self) -> Arc<JobMetrics> {
        Arc::clone(&self.metrics)
    }

    fn running(&self) -> bool {
        // Served while the process runs its job.
        true
    }

    fn restart_count(&self) -> usize {
        self.restarts
    }
}

/// Serves the running attempt's metrics for Prometheus at `http://ADDR/metrics`;
/// `attempts` counts the attempts started so far.
pub(crate) async fn serve_metrics(
    addr: &str,
    name: String,
    current: Current,
    attempts: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics at {addr}"))?;
    let jobs = move || -> Vec<RunJob> {
        let running = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        running
            .map(|(metrics, _)| RunJob {
                name: name.clone(),
                metrics,
                restarts: attempts.load(Ordering::Relaxed).saturating_sub(1),
            })
            .into_iter()
            .collect()
    };
    tokio::spawn(async move {
        if let Err(e) = sluice_server::serve_metrics(listener, jobs).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

/// Serves the metrics of the jobs a keyed cluster instance runs (its front and its
/// partition tasks, each under its own job name) at `http://ADDR/metrics`.
#[cfg(feature = "kafka")]
pub(crate) async fn serve_cluster_metrics(
    addr: &str,
    jobs: sluice::cluster::RunningJobs,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics at {addr}"))?;
    let list = move || -> Vec<RunJob> {
        jobs.lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, metrics)| RunJob {
                name: name.clone(),
                metrics: Arc::clone(metrics),
                restarts: 0,
            })
            .collect()
    };
    tokio::spawn(async move {
        if let Err(e) = sluice_server::serve_metrics(listener, list).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

/// Waits for Ctrl-C or (on Unix) SIGTERM, which is how supervisors such as Kubernetes
/// and systemd ask a process to stop; `false` when signals cannot be watched.
pub(crate) async fn interrupted() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return tokio::signal::ctrl_c().await.is_ok();
        };
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.is_ok(),
            _ = term.recv() => true,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}
