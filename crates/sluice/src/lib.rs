//! Sluice: a native stream processing engine. This crate is the Rust API and the job
//! runner with its restart strategies; the job server is `sluice-server`, the `sluice`
//! command `sluice-cli`.
//!
//! ```no_run
//! use sluice::prelude::*;
//!
//! # async fn run() -> sluice::Result<()> {
//! let p = Pipeline::new("hot-items");
//! p.source(NexmarkSource::bids().events(1_000_000))
//!     .filter(col("price").gt(lit(1_000)))
//!     .key_by(["auction"])
//!     .aggregate([count_star().alias("bids")])
//!     .sink(BlackholeSink::new());
//! p.run().await?;
//! # Ok(()) }
//! ```
//!
//! The Rust API and SQL build the same [`JobPlan`](sluice_plan::JobPlan); the runtime
//! only ever sees that plan.

#[cfg(feature = "kafka")]
pub mod cluster;
mod pipeline;
pub mod restart;

/// Plans a SQL script (see [`sql`]) with the built-in connectors and Nexmark's
/// `count_char` UDF: the job of its
/// `INSERT INTO` and `SELECT` statements, if any, and the plans of its `EXPLAIN`s.
pub fn plan_sql(script: &str, settings: &[(&str, &str)]) -> Result<sql::SqlJob> {
    plan_sql_with(sluice_connectors::registry(), script, settings)
}

/// [`plan_sql`] with the given connectors (for example the built-in ones behind a
/// [`runtime::FileGuard`]).
pub fn plan_sql_with(
    registry: runtime::ConnectorRegistry,
    script: &str,
    settings: &[(&str, &str)],
) -> Result<sql::SqlJob> {
    let mut ctx = sql_context(registry);
    for (k, v) in settings {
        ctx.set(k, v)?;
    }
    Ok(ctx.plan_script(script)?)
}

/// A SQL context with the given connectors and Sluice's own functions, for planning
/// statement after statement (a SQL client) with the catalog kept between them.
pub fn sql_context(registry: runtime::ConnectorRegistry) -> sql::SqlContext {
    let mut ctx = sql::SqlContext::new(registry);
    ctx.register_udf(sql::functions::count_char());
    ctx
}

pub use pipeline::{
    IntoSink, IntoSource, KeyedStream, Pipeline, RestartHooks, Stream, Trigger, Window,
    WindowedStream,
};
pub use sluice_connectors as connectors;
pub use sluice_plan as plan;
pub use sluice_plan::{DeliveryGuarantee, RestoreFrom};
pub use sluice_runtime as runtime;
pub use sluice_sql as sql;
pub use sluice_types::{Result, SluiceError, capture_backtraces};

/// Aggregate functions for [`KeyedStream::aggregate`] (DataFusion's).
pub mod functions {
    pub use datafusion_expr::{Accumulator, AggregateUDF, Volatility, create_udaf};
    pub use datafusion_functions_aggregate::expr_fn::{
        avg, count, count_distinct, first_value, last_value, max, min, sum,
    };

    /// `COUNT(*)`.
    pub fn count_star() -> datafusion_expr::Expr {
        datafusion_functions_aggregate::expr_fn::count(datafusion_expr::lit(1i64)).alias("count")
    }
}

/// Everything a pipeline needs, in one import.
pub mod prelude {
    pub use crate::functions::*;
    pub use crate::{
        DeliveryGuarantee, IntoSink, IntoSource, KeyedStream, Pipeline, RestoreFrom, Stream,
        Trigger, Window, WindowedStream,
    };
    pub use datafusion_expr::{Expr, col, lit};
    pub use sluice_connectors::{
        BlackholeSink, DatagenSource, FileSink, FileSource, NexmarkSource, PrintSink,
    };
    pub use std::time::Duration;
}
