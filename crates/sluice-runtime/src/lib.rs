//! The Sluice dataflow runtime: the operator trait, sources and the connector registry,
//! built-in operators, partitioning, chaining, tasks, backpressure and metrics.
//!
//! A [`JobPlan`](sluice_plan::JobPlan) is prepared into a [`PreparedJob`] (every node
//! checked against its input schema, connectors configured, chains formed) and started
//! into a [`JobHandle`].

pub mod checkpoint;
pub mod cluster;
pub mod crash;
pub mod dead_letter;
pub mod expr;
mod isolate;
pub mod job;
/// Per-job memory accounting (the allocator lives in its own crate).
pub use sluice_alloc as memory;
pub mod metrics;
pub mod operator;
pub mod operators;
pub mod partition;
pub mod source;
pub mod state;
mod task;

pub use checkpoint::SourceControl;
pub use checkpoint::SplitPosition;
pub use job::{JobHandle, PreparedJob, StopHandle};
pub use operator::{Collector, Operator, OperatorContext, TimeDomain, VecCollector};
pub use source::{
    ConnectorRegistry, FileGuard, Location, NamedFile, ReadResult, SinkConnector, SourceConnector,
    SourceReader, Split, append_only_sink_error, files_by_name,
};
pub use state::{OperatorState, RestoredState};
