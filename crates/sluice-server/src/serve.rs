//! Serving the API and the dashboard.

use std::net::SocketAddr;

use crate::api::router;
use crate::jobs::JobManager;
use sluice_types::SluiceError;

/// How a server runs.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Required on changing calls when set (and required beyond loopback).
    pub token: Option<String>,
    /// Where job definitions, checkpoints and savepoints are kept.
    pub data_dir: std::path::PathBuf,
    /// Where jobs may read and write files (the working directory when empty).
    pub allow_dirs: Vec<std::path::PathBuf>,
    /// A job's log file rotates at this size (`<data-dir>/logs/<job>.log`).
    pub log_file_bytes: u64,
    /// Rotated log files kept per job.
    pub log_files_kept: usize,
    /// Alert rules from the configuration (more can be added through the API).
    pub alert_rules: Vec<crate::alerts::AlertRule>,
    /// How often the alert rules are evaluated.
    pub alert_interval: std::time::Duration,
    /// Webhooks may call public addresses only: not this machine, private networks or
    /// link-local addresses (cloud metadata services).
    pub webhooks_public_only: bool,
    /// Most connections served at once (more wait in the listen queue).
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (and a kept-alive
    /// connection may idle) before the server closes the connection.
    pub header_timeout: std::time::Duration,
    /// Every job's memory limit, in bytes: a job's own `sluice.job.memory-limit` may
    /// lower it, not raise it. `None`: jobs set their own, or have none.
    pub job_memory_limit: Option<u64>,
}

/// Serves the API and the dashboard on `listener` until the process ends. A
/// non-loopback address needs a token.
pub async fn serve(
    listener: tokio::net::TcpListener,
    opts: ServerOptions,
) -> sluice_types::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    if !addr.ip().is_loopback() && opts.token.is_none() {
        return Err(SluiceError::user(format!(
            "the server would listen on {addr}, beyond this machine: give it an API token (--token or SLUICE_TOKEN)"
        )));
    }
    let max_connections = opts.max_connections.max(1);
    let header_timeout = opts
        .header_timeout
        .max(std::time::Duration::from_millis(100));
    let manager = JobManager::open(opts).await?;
    tracing::info!(%addr, "sluice server listening");
    accept(listener, router(manager), max_connections, header_timeout).await
}

/// Serves connections, at most `max` at a time: a client that opens many and sends
/// nothing (or half a request) holds each for `header_timeout` at most, and beyond
/// `max` new connections wait in the listen queue until one closes.
async fn accept(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    max: usize,
    header_timeout: std::time::Duration,
) -> sluice_types::Result<()> {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let Ok(slot) = std::sync::Arc::clone(&slots).acquire_owned().await else {
            return Err(SluiceError::internal("the connection slots closed"));
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, a connection reset before it was taken: wait a
                // little and go on (the listener itself stays good).
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "a connection ended with an error");
            }
        });
    }
}
