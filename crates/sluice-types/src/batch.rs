use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{Array, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, TimeUnit};

use crate::{Result, SluiceError};

/// Name of the event-time column every batch carries as its last column (milliseconds).
pub const TIMESTAMP_FIELD: &str = "_timestamp";

/// The Arrow field of the event-time column.
pub fn timestamp_field() -> Field {
    Field::new(
        TIMESTAMP_FIELD,
        DataType::Timestamp(TimeUnit::Millisecond, None),
        false,
    )
}

/// Wall-clock time in microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The range of wall-clock times (microseconds since the epoch) at which a batch's rows
/// entered Sluice. A sink subtracts `min_us` from its own clock to get the end-to-end
/// latency of the batch's oldest row: the latency a user feels, not a per-operator delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestTime {
    /// When the batch's first row was ingested.
    pub min_us: u64,
    /// When the batch's last row was ingested.
    pub max_us: u64,
}

impl IngestTime {
    /// A range covering a single instant.
    pub fn at(us: u64) -> Self {
        Self {
            min_us: us,
            max_us: us,
        }
    }

    /// The smallest range covering both.
    pub fn merge(self, other: Self) -> Self {
        Self {
            min_us: self.min_us.min(other.min_us),
            max_us: self.max_us.max(other.max_us),
        }
    }
}

/// A batch of rows flowing through the dataflow.
///
/// Invariant: the last column of `data` is [`TIMESTAMP_FIELD`], a non-null
/// `Timestamp(Millisecond)` column holding each row's event time.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The rows, event-time column last.
    pub data: RecordBatch,
    /// When the rows entered Sluice.
    pub ingest: IngestTime,
}

impl Batch {
    /// Wraps a record batch, checking the event-time invariant.
    pub fn try_new(data: RecordBatch, ingest: IngestTime) -> Result<Self> {
        let schema = data.schema();
        match schema.fields().last() {
            Some(f)
                if f.name() == TIMESTAMP_FIELD
                    && matches!(f.data_type(), DataType::Timestamp(TimeUnit::Millisecond, _)) =>
            {
                Ok(Self { data, ingest })
            }
            _ => Err(SluiceError::internal(format!(
                "batch schema must end with a `{TIMESTAMP_FIELD}` Timestamp(ms) column, got {schema}"
            ))),
        }
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.data.num_rows()
    }

    /// The event-time column.
    pub fn timestamps(&self) -> &TimestampMillisecondArray {
        self.data
            .column(self.data.num_columns() - 1)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .expect("invariant: the last column of a Batch is the Timestamp(ms) event-time column")
    }

    /// The largest event time in the batch, if it has rows.
    pub fn max_timestamp(&self) -> Option<i64> {
        arrow::compute::max(self.timestamps())
    }

    /// A batch with the same ingest time and new rows (which must keep the invariant).
    pub fn with_data(&self, data: RecordBatch) -> Self {
        Self {
            data,
            ingest: self.ingest,
        }
    }

    /// The rows without the event-time column, as sinks write them.
    pub fn user_columns(&self) -> RecordBatch {
        let n = self.data.num_columns() - 1;
        let indices: Vec<usize> = (0..n).collect();
        self.data
            .project(&indices)
            .expect("invariant: projecting existing column indices cannot fail")
    }

    /// Appends an event-time column to user rows.
    pub fn from_user_columns(
        user: &RecordBatch,
        timestamps: TimestampMillisecondArray,
        ingest: IngestTime,
    ) -> Result<Self> {
        let mut fields: Vec<Arc<Field>> = user.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(timestamp_field()));
        let mut columns = user.columns().to_vec();
        columns.push(Arc::new(timestamps));
        let schema = Arc::new(arrow::datatypes::Schema::new_with_metadata(
            fields,
            user.schema().metadata().clone(),
        ));
        let data = RecordBatch::try_new(schema, columns)?;
        Ok(Self { data, ingest })
    }
}
