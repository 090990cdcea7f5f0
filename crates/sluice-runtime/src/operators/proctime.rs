//! Processing time from here on: Flink's `PROCTIME()` in a query (`SELECT *, PROCTIME() AS
//! p FROM t`), where the rows' time becomes the moment they pass.
//!
//! Each row's time is the wall clock when its batch passes (never going back), and every
//! watermark from upstream comes out as the clock's time instead: rows stamped after it
//! carry a later time, so none is late. The end of input (`+∞`) passes as it is, so
//! processing-time windows of a bounded input close at its end.

use std::sync::Arc;

use arrow::array::{ArrayRef, TimestampMillisecondArray};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use sluice_types::{Batch, Result, SluiceError, Watermark};

use super::PreparedOperator;
use crate::operator::{Collector, Operator, OperatorContext};

/// Stamps rows with the wall clock; turns watermarks into the clock's.
pub struct ProcessingTimeOperator {
    schema: SchemaRef,
    /// The latest time given to a row or watermark (epoch ms).
    last: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl ProcessingTimeOperator {
    /// Checks the input has an event-time column to overwrite.
    pub fn prepare(input: &SchemaRef) -> Result<PreparedOperator> {
        if input.index_of(sluice_types::TIMESTAMP_FIELD).is_err() {
            return Err(SluiceError::internal(
                "processing time needs the rows' time column",
            ));
        }
        let schema = Arc::clone(input);
        Ok(PreparedOperator {
            output_schema: Arc::clone(input),
            factory: Arc::new(move |_| {
                Ok(Box::new(ProcessingTimeOperator {
                    schema: Arc::clone(&schema),
                    last: i64::MIN,
                }) as Box<dyn Operator>)
            }),
        })
    }

    /// The registered constructor of `processing-time` nodes.
    pub fn from_node(
        kind: &sluice_plan::NodeKind,
        inputs: &[&SchemaRef],
        _registry: &crate::source::ConnectorRegistry,
    ) -> Result<PreparedOperator> {
        let sluice_plan::NodeKind::ProcessingTime = kind else {
            return Err(crate::operators::wrong_node(kind, "processing-time"));
        };
        Self::prepare(&crate::operators::single_input(inputs)?)
    }

    fn tick(&mut self) -> i64 {
        self.last = self.last.max(now_ms());
        self.last
    }
}

#[async_trait]
impl Operator for ProcessingTimeOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let now = self.tick();
        let at = batch
            .data
            .schema()
            .index_of(sluice_types::TIMESTAMP_FIELD)
            .map_err(|_| SluiceError::internal("a batch without its time column"))?;
        let mut columns = batch.data.columns().to_vec();
        let field = batch.data.schema().field(at).clone();
        let stamped = TimestampMillisecondArray::from_value(now, batch.num_rows());
        let stamped: ArrayRef = match field.data_type() {
            arrow::datatypes::DataType::Timestamp(_, Some(tz)) => {
                Arc::new(stamped.with_timezone(Arc::clone(tz)))
            }
            _ => Arc::new(stamped),
        };
        columns[at] = stamped;
        let data = arrow::array::RecordBatch::try_new(batch.data.schema(), columns)?;
        out.collect(batch.with_data(data)).await
    }

    async fn on_watermark(
        &mut self,
        watermark: Watermark,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<Option<Watermark>> {
        if watermark == Watermark::MAX {
            return Ok(Some(watermark));
        }
        // Rows stamped from now on carry this time or a later one.
        let now = self.tick();
        Ok(Some(Watermark::EventTime(now - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::VecCollector;
    use sluice_testkit::batch_from_pretty;

    #[tokio::test]
    async fn rows_take_the_clock_and_watermarks_follow_it() {
        let input = batch_from_pretty(
            "
            | price:Int64 | _timestamp:Ts |
            | 1           | 1             |
            | 2           | 5             |",
        );
        let schema = input.data.schema();
        let p = ProcessingTimeOperator::prepare(&schema).unwrap();
        let mut op = (p.factory)(&sluice_types::TaskInfo::for_test("test")).unwrap();
        let mut ctx = OperatorContext::for_test(Arc::clone(&schema));
        let mut out = VecCollector::default();
        let before = now_ms();
        op.process_batch(input, &mut ctx, &mut out).await.unwrap();
        let times = out.batches[0]
            .data
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap()
            .clone();
        assert!(times.iter().all(|t| t.unwrap() >= before));
        let wm = op
            .on_watermark(Watermark::EventTime(3), &mut ctx, &mut out)
            .await
            .unwrap()
            .unwrap();
        assert!(wm.event_time().unwrap() >= times.value(0) - 1, "{wm:?}");
        let end = op
            .on_watermark(Watermark::MAX, &mut ctx, &mut out)
            .await
            .unwrap();
        assert_eq!(end, Some(Watermark::MAX));
    }
}
