use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{Array, Int8Array, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

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

/// Name of the column holding each row's [`RowKind`] (as `Int8`). Only the rows of an
/// updating stream carry it, as the column just before [`TIMESTAMP_FIELD`]; rows without
/// it are all inserts, so append-only dataflows pay nothing for changelogs.
pub const ROW_KIND_FIELD: &str = "_rowkind";

/// The Arrow field of the row-kind column.
pub fn row_kind_field() -> Field {
    Field::new(ROW_KIND_FIELD, DataType::Int8, false)
}

/// What a row of an updating stream does to the result, as Flink's `RowKind`:
/// a consumer that applies every change in order holds the current result.
///
/// ```text
///  SELECT k, COUNT(*) … GROUP BY k     rows: a a
///  +I[a, 1]   -U[a, 1]   +U[a, 2]
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i8)]
pub enum RowKind {
    /// A new row.
    Insert = 0,
    /// The previous value of a row about to be updated (taken back).
    UpdateBefore = 1,
    /// The new value of an updated row.
    UpdateAfter = 2,
    /// A row taken back for good.
    Delete = 3,
}

impl RowKind {
    /// The kind stored in the row-kind column as `code`.
    pub fn from_code(code: i8) -> Option<Self> {
        match code {
            0 => Some(RowKind::Insert),
            1 => Some(RowKind::UpdateBefore),
            2 => Some(RowKind::UpdateAfter),
            3 => Some(RowKind::Delete),
            _ => None,
        }
    }

    /// The value stored in the row-kind column.
    pub fn code(self) -> i8 {
        self as i8
    }

    /// Whether the row is added to the result (insert or update-after), rather than
    /// taken back out of it.
    pub fn is_addition(self) -> bool {
        matches!(self, RowKind::Insert | RowKind::UpdateAfter)
    }

    /// Flink's short form: `+I`, `-U`, `+U`, `-D`.
    pub fn short(self) -> &'static str {
        match self {
            RowKind::Insert => "+I",
            RowKind::UpdateBefore => "-U",
            RowKind::UpdateAfter => "+U",
            RowKind::Delete => "-D",
        }
    }
}

/// Whether rows of `schema` carry a row kind (an updating stream).
pub fn is_updating(schema: &Schema) -> bool {
    let n = schema.fields().len();
    n >= 2 && schema.field(n - 2).name() == ROW_KIND_FIELD
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

    /// Each row's kind, if the batch belongs to an updating stream (else all inserts).
    pub fn row_kinds(&self) -> Option<&Int8Array> {
        if !is_updating(self.data.schema_ref()) {
            return None;
        }
        self.data
            .column(self.data.num_columns() - 2)
            .as_any()
            .downcast_ref::<Int8Array>()
    }

    /// Every row's kind, in order (all inserts if the batch carries none): the kind column
    /// is looked up once, not per row.
    pub fn kinds(&self) -> impl Iterator<Item = RowKind> + '_ {
        let codes = self.row_kinds();
        (0..self.num_rows()).map(move |i| {
            codes
                .and_then(|k| RowKind::from_code(k.value(i)))
                .unwrap_or(RowKind::Insert)
        })
    }

    /// Row `i`'s kind (an insert if the batch carries no kinds). Looks the kind column up
    /// each time: loops over rows use [`Batch::kinds`].
    pub fn row_kind(&self, i: usize) -> RowKind {
        self.row_kinds()
            .and_then(|k| RowKind::from_code(k.value(i)))
            .unwrap_or(RowKind::Insert)
    }

    /// The number of columns before the row-kind and event-time columns.
    pub fn num_user_columns(&self) -> usize {
        user_column_count(self.data.schema_ref())
    }

    /// A batch with the same ingest time and new rows (which must keep the invariant).
    pub fn with_data(&self, data: RecordBatch) -> Self {
        Self {
            data,
            ingest: self.ingest,
        }
    }

    /// The rows without the row-kind and event-time columns, as sinks write them.
    pub fn user_columns(&self) -> RecordBatch {
        let n = self.num_user_columns();
        let indices: Vec<usize> = (0..n).collect();
        self.data
            .project(&indices)
            .expect("invariant: projecting existing column indices cannot fail")
    }

    /// User rows with their kinds and event times: a batch of an updating stream.
    pub fn from_changes(
        user: &RecordBatch,
        kinds: Int8Array,
        timestamps: TimestampMillisecondArray,
        ingest: IngestTime,
    ) -> Result<Self> {
        let mut fields: Vec<Arc<Field>> = user.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(row_kind_field()));
        fields.push(Arc::new(timestamp_field()));
        let mut columns = user.columns().to_vec();
        columns.push(Arc::new(kinds));
        columns.push(Arc::new(timestamps));
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            user.schema().metadata().clone(),
        ));
        let data = RecordBatch::try_new(schema, columns)?;
        Ok(Self { data, ingest })
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
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            user.schema().metadata().clone(),
        ));
        let data = RecordBatch::try_new(schema, columns)?;
        Ok(Self { data, ingest })
    }
}

/// The number of columns of `schema` before the row-kind (if any) and event-time columns.
pub fn user_column_count(schema: &Schema) -> usize {
    let n = schema.fields().len();
    match is_updating(schema) {
        true => n - 2,
        false => n.saturating_sub(1),
    }
}
