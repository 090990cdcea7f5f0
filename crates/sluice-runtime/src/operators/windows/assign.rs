//! Puts each row in its windows, as columns: one copy of the row per window it belongs
//! to, with `window_start` and `window_end` after its own columns, its kind and time
//! kept. What a window aggregate of an updating input groups by (a retraction lands in
//! the same windows as the row it takes back).
//!
//! ```text
//!  HOP(size 10 s, slide 5 s), t = 12 s   ──> [5 s, 15 s), [10 s, 20 s)
//!  CUMULATE(size 10 s, step 5 s), t = 7 s ──> [0 s, 10 s)   (not [0 s, 5 s): 7 s is past it)
//! ```

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use sluice_plan::WindowSpec;
use sluice_types::{Batch, Result, SluiceError, user_column_count};

use crate::operator::{Collector, Operator, OperatorContext};
use crate::operators::PreparedOperator;

/// The windows of a row at `t` (epoch ms): `(start, end)`, oldest first.
fn windows_of(spec: &WindowSpec, t: i64, out: &mut Vec<(i64, i64)>) {
    out.clear();
    let floor = |t: i64, m: i64| t - t.rem_euclid(m);
    match *spec {
        WindowSpec::Tumbling { size } => {
            let size = size.as_millis() as i64;
            let s = floor(t, size);
            out.push((s, s + size));
        }
        WindowSpec::Hopping { size, slide } => {
            let (size, slide) = (size.as_millis() as i64, slide.as_millis() as i64);
            let last = floor(t, slide);
            let mut s = last - size + slide;
            while s <= last {
                if s + size > t {
                    out.push((s, s + size));
                }
                s += slide;
            }
        }
        WindowSpec::Cumulate { size, step } => {
            let (size, step) = (size.as_millis() as i64, step.as_millis() as i64);
            let p = floor(t, size);
            let mut e = p + step;
            while e <= p + size {
                if e > t {
                    out.push((p, e));
                }
                e += step;
            }
        }
        WindowSpec::Session { .. } | WindowSpec::Count { .. } | WindowSpec::Global { .. } => {}
    }
}

/// Assigns rows to their time windows (tumbling, hopping or cumulating).
pub struct AssignWindowsOperator {
    window: WindowSpec,
    input: SchemaRef,
    output: SchemaRef,
}

impl AssignWindowsOperator {
    /// The output: the input's user columns, `window_start`, `window_end`, then the
    /// input's kind and time columns.
    pub fn prepare(window: &WindowSpec, input: &SchemaRef) -> Result<PreparedOperator> {
        if window.size_and_slide_ms().is_none() {
            return Err(SluiceError::user(format!(
                "rows can be put in time windows (TUMBLE, HOP, CUMULATE), not in {window}"
            )));
        }
        let users = user_column_count(input);
        let ms = DataType::Timestamp(TimeUnit::Millisecond, None);
        let mut fields: Vec<Arc<Field>> = input.fields()[..users].to_vec();
        for c in ["window_start", "window_end"] {
            if input.field_with_name(c).is_ok() {
                return Err(SluiceError::user(format!(
                    "the input already has a column `{c}`"
                )));
            }
            fields.push(Arc::new(Field::new(c, ms.clone(), false)));
        }
        fields.extend(input.fields()[users..].iter().cloned());
        let output: SchemaRef = Arc::new(Schema::new(fields));
        let (window, input, out) = (*window, Arc::clone(input), Arc::clone(&output));
        Ok(PreparedOperator {
            output_schema: output,
            factory: Arc::new(move |_| {
                Ok(Box::new(AssignWindowsOperator {
                    window,
                    input: Arc::clone(&input),
                    output: Arc::clone(&out),
                }) as Box<dyn Operator>)
            }),
        })
    }

    /// The registered constructor of `assign-windows` nodes.
    pub fn from_node(
        kind: &sluice_plan::NodeKind,
        inputs: &[&SchemaRef],
        _registry: &crate::source::ConnectorRegistry,
    ) -> Result<PreparedOperator> {
        let sluice_plan::NodeKind::AssignWindows { window } = kind else {
            return Err(crate::operators::wrong_node(kind, "assign-windows"));
        };
        Self::prepare(window, &crate::operators::single_input(inputs)?)
    }
}

#[async_trait]
impl Operator for AssignWindowsOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.output)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let times = batch.timestamps();
        let mut rows = Vec::with_capacity(batch.num_rows());
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        let mut windows = Vec::new();
        for i in 0..batch.num_rows() {
            windows_of(&self.window, times.value(i), &mut windows);
            for &(s, e) in &windows {
                rows.push(i as u32);
                starts.push(s);
                ends.push(e);
            }
            // Rows in many windows leave in bounded batches, each sent before the next.
            if rows.len() >= MAX_OUTPUT_ROWS {
                let data = self.copies(&batch, &mut rows, &mut starts, &mut ends)?;
                out.collect(batch.with_data(data)).await?;
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let data = self.copies(&batch, &mut rows, &mut starts, &mut ends)?;
        out.collect(batch.with_data(data)).await
    }
}

/// Most rows of one output batch.
const MAX_OUTPUT_ROWS: usize = 8192;

impl AssignWindowsOperator {
    /// The copies of `batch`'s rows `rows` in windows `starts`/`ends` (which it empties).
    fn copies(
        &self,
        batch: &Batch,
        rows: &mut Vec<u32>,
        starts: &mut Vec<i64>,
        ends: &mut Vec<i64>,
    ) -> Result<RecordBatch> {
        let rows = UInt32Array::from(std::mem::take(rows));
        let (starts, ends) = (std::mem::take(starts), std::mem::take(ends));
        let users = user_column_count(&self.input);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.output.fields().len());
        for c in &batch.data.columns()[..users] {
            columns.push(take(c.as_ref(), &rows, None)?);
        }
        columns.push(Arc::new(TimestampMillisecondArray::from(starts)));
        columns.push(Arc::new(TimestampMillisecondArray::from(ends)));
        for c in &batch.data.columns()[users..] {
            columns.push(take(c.as_ref(), &rows, None)?);
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.output), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn windows(spec: WindowSpec, t: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        windows_of(&spec, t, &mut out);
        out
    }

    #[test]
    fn rows_land_in_every_window_that_holds_their_time() {
        let s = Duration::from_secs;
        let hop = WindowSpec::Hopping {
            size: s(10),
            slide: s(5),
        };
        assert_eq!(windows(hop, 12_000), [(5_000, 15_000), (10_000, 20_000)]);
        assert_eq!(windows(hop, 10_000), [(5_000, 15_000), (10_000, 20_000)]);
        assert_eq!(windows(hop, -1), [(-10_000, 0), (-5_000, 5_000)]);
        let cumulate = WindowSpec::Cumulate {
            size: s(10),
            step: s(5),
        };
        assert_eq!(windows(cumulate, 7_000), [(0, 10_000)]);
        assert_eq!(windows(cumulate, 3_000), [(0, 5_000), (0, 10_000)]);
        let tumble = WindowSpec::Tumbling { size: s(10) };
        assert_eq!(windows(tumble, 19_999), [(10_000, 20_000)]);
    }
}
