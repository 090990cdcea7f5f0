//! `sluice server`: a long-running job manager. Many jobs in one process, a REST API,
//! and Prometheus metrics.
//!
//! ```text
//!  POST /api/jobs {sql} ──plan──> JobEntry (status, metrics, stop handle) ──tokio task──> job
//!  GET  /api/jobs, /api/jobs/{id}      read the entries (live metrics: atomics)
//!  POST /api/jobs/{id}/cancel          stop: sources end, in-flight data drains
//!  GET  /api/jobs/{id}/history      the last 15 minutes, one sample a second (charts)
//!  GET  /metrics                       Prometheus text, one series per job/operator/subtask
//!  GET  /api/openapi.json              the API's OpenAPI document
//! ```
//!
//! A job that fails only changes its own status: its error is kept and shown. Bound to a
//! non-loopback address, every call that changes something needs the API token
//! (`Authorization: Bearer <token>`).

mod alert_history;
pub mod alerts;
mod api;
pub mod dashboard;
mod diagnosis;
mod durable;
mod history;
mod jobs;
mod lineage;
pub mod logs;
mod prometheus;
mod sandbox;
mod serve;

pub use api::{ApiError, openapi_document, router};
pub use jobs::{Delivery, Failure, JobManager, JobStatus, Submit};
pub use lineage::{Endpoint, Graph, GraphEdge, GraphNode, Lineage};
pub use prometheus::{MetricsSource, exposition, serve_metrics};
pub use sandbox::Sandbox;
pub use serve::{ServerOptions, serve};
