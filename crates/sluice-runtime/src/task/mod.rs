//! Subtask loops. A task runs a chain of operators (stateless operators on forward
//! edges are fused, no channel between them) fed either by a source reader or by the
//! channels from upstream subtasks.
//!
//! ```text
//!  operator task:  inputs ─poll round-robin─> merge ─> chain[0] ─> chain[1] ─> … ─> Outputs
//!     Data        -> chain.process_batch
//!     Watermark   -> per-input watermark; min over live inputs; forward if it advanced
//!     Barrier     -> block that input until every live input delivered it (alignment),
//!                    then snapshot each chained operator and forward the barrier
//!     EndOfData   -> input ends (counts as watermark +∞); when all ended:
//!                    final watermark, close chain (flush), forward EndOfData, exit
//! ```

mod chain;
mod inputs;
mod operator_task;
mod source_task;

use sluice_types::now_micros;

pub(crate) use chain::{Chain, Slot};
pub(crate) use inputs::Inputs;
pub(crate) use operator_task::{TaskCheckpoints, run_operator_task};
pub(crate) use source_task::{EventTimeColumn, SourceTask, run_source_task};

/// Wall-clock time in epoch milliseconds (the processing-time domain).
pub(crate) fn epoch_ms() -> i64 {
    (now_micros() / 1000) as i64
}

/// Sleeps until the wall clock reaches `ms` (epoch milliseconds).
pub(crate) async fn sleep_until_epoch_ms(ms: i64) {
    let wait = ms.saturating_sub(epoch_ms()).max(0) as u64;
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use sluice_types::{Batch, Result, Watermark};
    use tokio::sync::mpsc;

    use super::*;
    use crate::operator::{Collector, Operator, OperatorContext, TimeDomain};
    use crate::partition::Outputs;

    fn inputs(n: usize) -> Inputs {
        let rx = (0..n).map(|_| mpsc::channel(1).1).collect();
        Inputs::new(rx, true)
    }

    fn drain(i: &mut Inputs) -> Vec<Watermark> {
        std::iter::from_fn(|| i.merge()).collect()
    }

    #[test]
    fn minimum_over_inputs_and_never_backwards() {
        let mut i = inputs(2);
        i.set_watermark(0, Watermark::EventTime(10));
        assert_eq!(drain(&mut i), [], "input 1 has said nothing yet");
        i.set_watermark(1, Watermark::EventTime(5));
        assert_eq!(drain(&mut i), [Watermark::EventTime(5)]);
        i.set_watermark(1, Watermark::EventTime(20));
        assert_eq!(drain(&mut i), [Watermark::EventTime(10)]);
        i.set_watermark(0, Watermark::EventTime(8));
        assert_eq!(drain(&mut i), [], "never backwards");
    }

    #[test]
    fn idle_inputs_are_skipped_and_all_idle_releases_the_largest_time() {
        let mut i = inputs(2);
        i.set_watermark(0, Watermark::EventTime(5_000));
        // Input 0 goes idle before input 1 says anything: nothing is known yet.
        i.set_watermark(0, Watermark::Idle);
        assert_eq!(drain(&mut i), []);
        // Input 1 idle too: event time advances to what input 0 reached, then idle.
        i.set_watermark(1, Watermark::Idle);
        assert_eq!(
            drain(&mut i),
            [Watermark::EventTime(5_000), Watermark::Idle]
        );
        // Input 1 active again, behind: active at the event time already reached.
        i.set_watermark(1, Watermark::EventTime(3_000));
        assert_eq!(drain(&mut i), [Watermark::EventTime(5_000)]);
        i.set_watermark(1, Watermark::EventTime(7_000));
        assert_eq!(drain(&mut i), [Watermark::EventTime(7_000)]);
    }

    /// Registers an event-time timer 10 ms after each batch's last row and a
    /// processing-time timer at 1000 ms; records what fires.
    struct TimerOperator {
        schema: arrow::datatypes::SchemaRef,
        fired: Arc<std::sync::Mutex<Vec<(TimeDomain, i64)>>>,
    }

    #[async_trait]
    impl Operator for TimerOperator {
        fn output_schema(&self) -> arrow::datatypes::SchemaRef {
            Arc::clone(&self.schema)
        }

        async fn process_batch(
            &mut self,
            b: Batch,
            ctx: &mut OperatorContext,
            _: &mut dyn Collector,
        ) -> Result<()> {
            let t = b.max_timestamp().unwrap();
            ctx.timers.register(TimeDomain::EventTime, t + 10);
            ctx.timers.register(TimeDomain::ProcessingTime, 1_000);
            Ok(())
        }

        async fn on_timer(
            &mut self,
            domain: TimeDomain,
            time: i64,
            _ctx: &mut OperatorContext,
            _out: &mut dyn Collector,
        ) -> Result<()> {
            self.fired.lock().unwrap().push((domain, time));
            Ok(())
        }
    }

    #[tokio::test]
    async fn timers_fire_once_in_time_order() {
        let b = sluice_testkit::batch_from_pretty(
            "
            | v:Int64 | _timestamp:Ts |
            | 1       | 100           |",
        );
        let b2 = sluice_testkit::batch_from_pretty(
            "
            | v:Int64 | _timestamp:Ts |
            | 1       | 90            |",
        );
        let fired = Arc::new(std::sync::Mutex::new(Vec::new()));
        let schema = b.data.schema();
        let mut chain = Chain {
            slots: vec![Slot {
                op: Box::new(TimerOperator {
                    schema: Arc::clone(&schema),
                    fired: Arc::clone(&fired),
                }),
                ctx: OperatorContext::for_test(schema),
                is_sink: true,
            }],
            out: Outputs::new(Vec::new(), crate::metrics::SubtaskMetrics::new()),
        };
        chain.process(b).await.unwrap();
        chain.process(b2).await.unwrap();
        chain.watermark(Watermark::EventTime(105)).await.unwrap();
        assert_eq!(*fired.lock().unwrap(), [(TimeDomain::EventTime, 100)]);
        chain.watermark(Watermark::EventTime(200)).await.unwrap();
        assert_eq!(chain.next_processing_timer(), Some(1_000));
        chain.fire_processing_timers(999).await.unwrap();
        chain.fire_processing_timers(5_000).await.unwrap();
        chain.fire_processing_timers(6_000).await.unwrap();
        assert_eq!(
            *fired.lock().unwrap(),
            [
                (TimeDomain::EventTime, 100),
                (TimeDomain::EventTime, 110),
                (TimeDomain::ProcessingTime, 1_000)
            ],
            "each timer fires once; the same time registered twice fires once"
        );
        assert_eq!(chain.next_processing_timer(), None);
    }

    #[test]
    fn ended_inputs_count_as_the_end_of_time() {
        let mut i = inputs(2);
        i.set_watermark(0, Watermark::EventTime(1));
        i.set_watermark(1, Watermark::EventTime(2));
        assert_eq!(drain(&mut i), [Watermark::EventTime(1)]);
        i.end(0);
        assert_eq!(drain(&mut i), [Watermark::EventTime(2)]);
        i.end(1);
        assert_eq!(drain(&mut i), [Watermark::MAX]);
    }
}
