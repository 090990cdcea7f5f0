//! Windows: the slicing operator for tumbling, hopping and cumulating windows
//! ([`slicing`]), count windows ([`count`]), sessions ([`session`]) and global windows
//! with triggers ([`global`]); the output schema, key encoding, late-row routing and
//! early firing they share.

pub mod assign;
pub mod count;
pub mod global;
pub mod session;
pub mod session_changes;
pub mod slicing;

pub use slicing::WindowAggregateOperator;

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use datafusion_common::ScalarValue;
use sluice_types::{Batch, Result, SluiceError, timestamp_field};

use crate::dead_letter::DeadLetter;
use crate::operator::{Collector, OperatorContext, TimeDomain};
use crate::operators::aggregates::PlannedAggregates;

/// The registered constructor of window aggregate nodes: the operator for the window's
/// kind.
pub fn from_node(
    kind: &sluice_plan::NodeKind,
    inputs: &[&SchemaRef],
    _registry: &crate::source::ConnectorRegistry,
) -> Result<crate::operators::PreparedOperator> {
    use sluice_plan::WindowSpec;
    let sluice_plan::NodeKind::WindowAggregate {
        keys,
        window,
        aggregates,
        allowed_lateness,
        early_firing,
    } = kind
    else {
        return Err(crate::operators::wrong_node(kind, "window aggregate"));
    };
    let input = &crate::operators::single_input(inputs)?;
    if sluice_types::is_updating(input) {
        return match window {
            WindowSpec::Session { gap } if early_firing.is_none() && allowed_lateness.is_zero() => {
                session_changes::SessionOfChangesOperator::prepare(keys, *gap, aggregates, input)
            }
            _ => Err(SluiceError::user(format!(
                "a {window} window with lateness or early firing cannot take an updating input"
            ))),
        };
    }
    match window {
        WindowSpec::Global { .. } if early_firing.is_some() => Err(SluiceError::user(
            "a global window fires by its trigger; add a processing-time interval to the trigger instead of early firing",
        )),
        WindowSpec::Global { trigger } => {
            global::GlobalWindowOperator::prepare(keys, *trigger, aggregates, input)
        }
        WindowSpec::Count { size, slide } => Ok(count::CountWindowOperator::new(
            keys, *size, *slide, aggregates, input,
        )?
        .with_early_firing(*early_firing)
        .into_prepared()),
        WindowSpec::Session { gap } => Ok(session::SessionWindowOperator::new(
            keys,
            *gap,
            aggregates,
            *allowed_lateness,
            input,
        )?
        .with_early_firing(*early_firing)
        .into_prepared()),
        _ => Ok(slicing::WindowAggregateOperator::new(
            keys,
            *window,
            aggregates,
            *allowed_lateness,
            input,
        )?
        .with_early_firing(*early_firing)
        .into_prepared()),
    }
}

/// The side output that carries late rows (with the operator's input schema).
pub const LATE_OUTPUT: &str = "late";

/// Output column: inclusive window start.
pub const WINDOW_START: &str = "window_start";
/// Output column: exclusive window end.
pub const WINDOW_END: &str = "window_end";

/// Event times windows accept: ±146 million years, so that window bounds never overflow.
pub const MIN_EVENT_TIME: i64 = i64::MIN / 2;
/// See [`MIN_EVENT_TIME`].
pub const MAX_EVENT_TIME: i64 = i64::MAX / 2;

/// Sends rows to the dead-letter output, one JSON line each, with the reason.
pub(crate) fn dead_letter_rows(
    ctx: &OperatorContext,
    rows: &RecordBatch,
    error: &str,
) -> Result<()> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(rows)?;
        w.finish()?;
    }
    for line in String::from_utf8_lossy(&buf).lines() {
        ctx.dead_letter(DeadLetter {
            position: ctx.task.operator_name.clone(),
            error: error.to_string(),
            raw: line.to_string(),
        });
    }
    Ok(())
}

/// Column of the late side output: why the row is late.
pub const LATE_REASON: &str = "late_reason";
/// Column of the late side output: the watermark the row missed.
pub const MISSED_WATERMARK: &str = "missed_watermark";

/// The schema of the late side output of an operator with input `input`: its columns,
/// then `late_reason` and `missed_watermark`, then `_timestamp`.
pub fn late_output_schema(input: &SchemaRef) -> Result<SchemaRef> {
    let n = input.fields().len();
    let mut fields: Vec<Arc<Field>> = input.fields()[..n.saturating_sub(1)].to_vec();
    for name in [LATE_REASON, MISSED_WATERMARK] {
        if fields.iter().any(|f| f.name() == name) {
            return Err(SluiceError::user(format!(
                "input column `{name}` clashes with the late side output's column; rename it"
            )));
        }
    }
    fields.push(Arc::new(Field::new(LATE_REASON, DataType::Utf8, false)));
    fields.push(Arc::new(Field::new(
        MISSED_WATERMARK,
        DataType::Timestamp(TimeUnit::Millisecond, None),
        false,
    )));
    fields.push(Arc::new(timestamp_field()));
    Ok(Arc::new(Schema::new(fields)))
}

/// Late rows go to the `late` side output if the pipeline consumes it (with the reason
/// and the watermark they missed as columns), otherwise to the dead-letter output with
/// `reason`; either way they are counted.
pub(crate) async fn emit_late(
    ctx: &OperatorContext,
    rows: Batch,
    out: &mut dyn Collector,
    reason: &str,
    watermark: i64,
) -> Result<()> {
    let n = rows.num_rows();
    ctx.metrics
        .late_records
        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    let data = rows.data.clone();
    let mut columns = data.columns().to_vec();
    let ts = columns
        .pop()
        .ok_or_else(|| SluiceError::internal("no columns"))?;
    columns.push(Arc::new(arrow::array::StringArray::from_iter_values(
        std::iter::repeat_n(reason, n),
    )));
    columns.push(Arc::new(TimestampMillisecondArray::from_value(
        watermark, n,
    )));
    columns.push(ts);
    let side = RecordBatch::try_new(late_output_schema(&data.schema())?, columns)?;
    if out.collect_side(LATE_OUTPUT, rows.with_data(side)).await? {
        return Ok(());
    }
    dead_letter_rows(ctx, &data, reason)
}

/// The output schema shared by window aggregates: keys, `window_start`, `window_end`,
/// aggregates, `_timestamp`.
pub(crate) fn window_output_schema(planned: &PlannedAggregates) -> Result<SchemaRef> {
    let ts_type = DataType::Timestamp(TimeUnit::Millisecond, None);
    let mut fields: Vec<Arc<Field>> = planned.key_fields.clone();
    for name in [WINDOW_START, WINDOW_END] {
        if fields.iter().any(|f| f.name() == name) {
            return Err(SluiceError::user(format!(
                "key column `{name}` clashes with the window column"
            )));
        }
        fields.push(Arc::new(Field::new(name, ts_type.clone(), false)));
    }
    fields.extend(planned.aggregate_fields.iter().cloned());
    fields.push(Arc::new(timestamp_field()));
    Ok(Arc::new(Schema::new(fields)))
}

/// Row encoding of key columns; `None` for a non-keyed window.
pub(crate) fn key_converter(key_types: &[DataType]) -> Result<Option<RowConverter>> {
    if key_types.is_empty() {
        return Ok(None);
    }
    let fields = key_types
        .iter()
        .map(|t| SortField::new(t.clone()))
        .collect();
    Ok(Some(RowConverter::new(fields).map_err(|e| {
        SluiceError::user("unsupported key column type").with_source(e)
    })?))
}

/// The row-encoded key columns of `batch`; `None` for a non-keyed operator.
pub(crate) fn encode_keys(
    converter: Option<&RowConverter>,
    key_indices: &[usize],
    batch: &Batch,
) -> Result<Option<Rows>> {
    let Some(c) = converter else {
        return Ok(None);
    };
    let cols: Vec<ArrayRef> = key_indices
        .iter()
        .map(|&i| Arc::clone(batch.data.column(i)))
        .collect();
    Ok(Some(c.convert_columns(&cols)?))
}

/// Registers the early-firing timer `every` ms from now, unless one is registered.
pub(crate) fn arm_early_timer(every: Option<i64>, armed: &mut bool, ctx: &mut OperatorContext) {
    if let (Some(every), false) = (every, *armed) {
        let now = (sluice_types::now_micros() / 1000) as i64;
        ctx.timers.register(TimeDomain::ProcessingTime, now + every);
        *armed = true;
    }
}

/// Window results under construction, one row per firing: key, bounds, aggregate
/// values, event time. Shared by the count and global window operators.
pub(crate) struct WindowResults {
    pub(crate) keys: Vec<OwnedRow>,
    pub(crate) starts: Vec<i64>,
    pub(crate) ends: Vec<i64>,
    pub(crate) times: Vec<i64>,
    pub(crate) values: Vec<Vec<ScalarValue>>,
}

impl WindowResults {
    pub(crate) fn new(aggregates: usize) -> Self {
        Self {
            keys: Vec::new(),
            starts: Vec::new(),
            ends: Vec::new(),
            times: Vec::new(),
            values: vec![Vec::new(); aggregates],
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The results as a batch of `schema` (keys encoded by `converter`), carrying the
    /// ingest time of the newest input; `None` when there are none.
    pub(crate) fn into_batch(
        self,
        schema: &SchemaRef,
        converter: Option<&RowConverter>,
        latest_ingest_us: u64,
    ) -> Result<Option<Batch>> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut columns: Vec<ArrayRef> = match converter {
            Some(c) => c.convert_rows(self.keys.iter().map(|k| k.row()))?,
            None => Vec::new(),
        };
        columns.push(Arc::new(TimestampMillisecondArray::from(self.starts)));
        columns.push(Arc::new(TimestampMillisecondArray::from(self.ends)));
        for v in self.values {
            columns.push(ScalarValue::iter_to_array(v).map_err(df_err)?);
        }
        columns.push(Arc::new(TimestampMillisecondArray::from(self.times)));
        let data = RecordBatch::try_new(Arc::clone(schema), columns)?;
        let ingest = sluice_types::IngestTime::at(match latest_ingest_us {
            0 => sluice_types::now_micros(),
            t => t,
        });
        Ok(Some(Batch { data, ingest }))
    }
}

fn df_err(e: datafusion_common::DataFusionError) -> SluiceError {
    SluiceError::user("window aggregate computation failed").with_source(e)
}
