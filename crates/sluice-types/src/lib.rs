//! The vocabulary every Sluice crate shares: batches, in-band control messages,
//! watermarks, checkpoint barriers, identifiers and errors.
//!
//! Data moves between operators as [`Batch`]es: an Arrow `RecordBatch` whose last
//! column is the event-time column [`TIMESTAMP_FIELD`] (milliseconds), together with
//! the ingest-time range of its rows so that sinks can measure true end-to-end latency.
//! Control signals travel in-band on the same channels, as [`Message`] variants.

mod batch;
mod error;
mod message;

pub use batch::{
    Batch, IngestTime, ROW_KIND_FIELD, RowKind, TIMESTAMP_FIELD, is_updating, now_micros,
    row_kind_field, timestamp_field, user_column_count,
};
pub use error::{ErrorKind, Result, SluiceError, capture_backtraces, panic_message};
pub use message::{CheckpointBarrier, CheckpointKind, Message, Watermark};

/// `s` cut to at most `max` bytes (on a character boundary), saying how much was left
/// out: what a log line shows of a payload that may be any size.
pub fn truncated(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes more)", &s[..end], s.len() - end))
}

/// The civil date (year, month, day) of a day count since 1970-01-01 (proleptic
/// Gregorian), after Howard Hinnant's algorithm.
///
/// ```
/// assert_eq!(sluice_types::civil_date(0), (1970, 1, 1));
/// assert_eq!(sluice_types::civil_date(20_454), (2026, 1, 1));
/// ```
pub fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The time of day (UTC) of an epoch-ms time: `HH:MM:SS.mmm`.
///
/// ```
/// assert_eq!(sluice_types::time_of_day(86_400_000 + 3_723_004), "01:02:03.004");
/// ```
pub fn time_of_day(ms: i64) -> String {
    let day = ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day / 3_600_000,
        day / 60_000 % 60,
        day / 1000 % 60,
        day % 1000
    )
}

/// Identifies one parallel instance of an operator inside a job.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskInfo {
    /// The job's name.
    pub job: String,
    /// Index of the operator (plan node) in the job graph.
    pub operator_id: usize,
    /// Human-readable operator name, e.g. `filter` or `source:nexmark`.
    pub operator_name: String,
    /// Which subtask this is, in `0..parallelism`.
    pub subtask: usize,
    /// How many subtasks the operator runs with.
    pub parallelism: usize,
}

impl TaskInfo {
    /// A task description for tests and single-operator use.
    pub fn for_test(operator_name: &str) -> Self {
        Self {
            job: "test".into(),
            operator_id: 0,
            operator_name: operator_name.into(),
            subtask: 0,
            parallelism: 1,
        }
    }
}

impl std::fmt::Display for TaskInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}#{}[{}/{}]",
            self.job,
            self.operator_name,
            self.operator_id,
            self.subtask + 1,
            self.parallelism
        )
    }
}
