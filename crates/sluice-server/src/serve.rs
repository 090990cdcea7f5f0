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
    let manager = JobManager::open(opts).await?;
    tracing::info!(%addr, "sluice server listening");
    axum::serve(listener, router(manager))
        .await
        .map_err(|e| SluiceError::external("the server stopped").with_source(e))
}
