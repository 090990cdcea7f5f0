//! `SELECT … LIMIT n` on a stream: the first `n` rows in arrival order pass, the rest
//! are dropped. One subtask sees every row, so "first" is well defined; how many rows
//! have passed is checkpointed, so a restore never lets more than `n` through.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use sluice_types::{Batch, CheckpointBarrier, Result, SluiceError};

use super::PreparedOperator;
use crate::operator::{Collector, Operator, OperatorContext};
use crate::state::{OperatorState, RestoredState};

/// Passes the first `fetch` rows.
pub struct LimitOperator {
    schema: SchemaRef,
    fetch: usize,
    passed: usize,
}

impl LimitOperator {
    /// A limit of `fetch` rows over rows of `input`.
    pub fn prepare(fetch: usize, input: &SchemaRef) -> Result<PreparedOperator> {
        if sluice_types::is_updating(input) {
            return Err(SluiceError::user(
                "LIMIT over an updating result is not supported: add ORDER BY … to make it a Top-N",
            ));
        }
        let schema = Arc::clone(input);
        Ok(PreparedOperator {
            output_schema: Arc::clone(input),
            factory: Arc::new(move |_| {
                Ok(Box::new(LimitOperator {
                    schema: Arc::clone(&schema),
                    fetch,
                    passed: 0,
                }) as Box<dyn Operator>)
            }),
        })
    }

    /// The registered constructor of `limit` nodes.
    pub fn from_node(
        kind: &sluice_plan::NodeKind,
        inputs: &[&SchemaRef],
        _registry: &crate::source::ConnectorRegistry,
    ) -> Result<PreparedOperator> {
        let sluice_plan::NodeKind::Limit { fetch } = kind else {
            return Err(crate::operators::wrong_node(kind, "limit"));
        };
        Self::prepare(*fetch, &crate::operators::single_input(inputs)?)
    }
}

impl LimitOperator {
    /// Says so in the metrics once every row has passed (what `sluice run` stops on).
    fn mark_exhausted(&self, ctx: &OperatorContext) {
        if self.passed >= self.fetch {
            ctx.metrics
                .exhausted
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Passed {
    passed: usize,
}

#[async_trait]
impl Operator for LimitOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let left = self.fetch - self.passed;
        if left == 0 || batch.num_rows() == 0 {
            return Ok(());
        }
        let take = left.min(batch.num_rows());
        self.passed += take;
        self.mark_exhausted(ctx);
        let batch = match take == batch.num_rows() {
            true => batch,
            false => batch.with_data(batch.data.slice(0, take)),
        };
        out.collect(batch).await
    }

    async fn snapshot(
        &mut self,
        _barrier: &CheckpointBarrier,
        _ctx: &mut OperatorContext,
    ) -> Result<OperatorState> {
        Ok(OperatorState {
            keyed: Default::default(),
            meta: serde_json::to_value(Passed {
                passed: self.passed,
            })
            .map_err(|e| SluiceError::internal("encoding limit state failed").with_source(e))?,
        })
    }

    async fn restore(&mut self, state: RestoredState, ctx: &mut OperatorContext) -> Result<()> {
        // One subtask: one old count (rows passed by several would add up).
        let passed: usize = state.metas::<Passed>()?.iter().map(|p| p.passed).sum();
        self.passed = passed.min(self.fetch);
        self.mark_exhausted(ctx);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VecCollector;
    use sluice_testkit::batch_from_pretty;

    fn rows(from: i64, n: i64) -> Batch {
        let mut text = String::from("| x:Int64 | _timestamp:Ts |\n");
        for i in from..from + n {
            text.push_str(&format!("| {i} | {i} |\n"));
        }
        batch_from_pretty(&text)
    }

    fn values(out: &VecCollector) -> Vec<i64> {
        out.batches
            .iter()
            .flat_map(|b| {
                b.data
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[tokio::test]
    async fn the_first_rows_pass_and_a_restore_lets_no_more_through() {
        let schema = rows(0, 1).data.schema();
        let p = LimitOperator::prepare(5, &schema).unwrap();
        let task = sluice_types::TaskInfo::for_test("limit");
        let mut op = (p.factory)(&task).unwrap();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        let mut out = VecCollector::default();
        op.process_batch(rows(0, 3), &mut ctx, &mut out)
            .await
            .unwrap();
        let state = op
            .snapshot(&crate::operators::test_util::barrier(), &mut ctx)
            .await
            .unwrap();
        op.process_batch(rows(3, 4), &mut ctx, &mut out)
            .await
            .unwrap();
        op.process_batch(rows(7, 2), &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(values(&out), [0, 1, 2, 3, 4]);

        // Restored from after the first three rows: two more pass.
        let mut op = (p.factory)(&task).unwrap();
        let restored = RestoredState {
            metas: vec![state.meta],
            ..Default::default()
        };
        op.restore(restored, &mut ctx).await.unwrap();
        let mut out = VecCollector::default();
        op.process_batch(rows(3, 4), &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(values(&out), [3, 4]);
    }
}
