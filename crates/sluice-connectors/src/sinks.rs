//! `'connector' = 'blackhole'` (discards rows; for benchmarks) and `'connector' = 'print'`
//! (rows on standard output as Flink prints them: `+I[1001, 42]`, `-U[…]`, `+U[…]`, `-D[…]`,
//! prefixed `id> ` by `print-identifier` and with the subtask when there are several).

use std::io::Write;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use sluice_plan::ConnectorSpec;
use sluice_runtime::{Collector, Operator, OperatorContext, SinkConnector};
use sluice_types::{Batch, Result, SluiceError, TaskInfo};

use crate::options::OptionReader;

/// Discards everything (the runtime still counts rows and measures latency at it).
pub struct BlackholeConnector;

/// The blackhole sink operator.
pub struct BlackholeOperator {
    input: SchemaRef,
}

impl SinkConnector for BlackholeConnector {
    type Config = SchemaRef;

    fn name(&self) -> &'static str {
        "blackhole"
    }

    fn options(&self) -> &'static [&'static str] {
        &[]
    }

    fn parse(&self, _spec: &ConnectorSpec, input: &SchemaRef) -> Result<SchemaRef> {
        Ok(Arc::clone(input))
    }

    fn accepts_updates(&self, _spec: &ConnectorSpec) -> bool {
        true
    }

    fn create(&self, config: &Arc<SchemaRef>, _task: &TaskInfo) -> Result<Box<dyn Operator>> {
        Ok(Box::new(BlackholeOperator {
            input: Arc::clone(config),
        }))
    }
}

#[async_trait]
impl Operator for BlackholeOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.input)
    }

    async fn process_batch(
        &mut self,
        _batch: Batch,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<()> {
        Ok(())
    }
}

/// Prints rows to standard output the way Flink's print connector does.
pub struct PrintConnector;

/// Parsed print options.
pub struct PrintConfig {
    identifier: Option<String>,
    input: SchemaRef,
}

/// The print sink operator.
pub struct PrintOperator {
    config: Arc<PrintConfig>,
    /// `id> `, `id:2> `, `2> ` or nothing, as Flink prefixes its lines.
    prefix: String,
    buf: Vec<u8>,
}

impl SinkConnector for PrintConnector {
    type Config = PrintConfig;

    fn name(&self) -> &'static str {
        "print"
    }

    fn options(&self) -> &'static [&'static str] {
        &["print-identifier"]
    }

    fn parse(&self, spec: &ConnectorSpec, input: &SchemaRef) -> Result<PrintConfig> {
        let o = OptionReader::new("print", spec);
        Ok(PrintConfig {
            identifier: o.str("print-identifier").map(str::to_string),
            input: Arc::clone(input),
        })
    }

    fn accepts_updates(&self, _spec: &ConnectorSpec) -> bool {
        true
    }

    fn create(&self, config: &Arc<PrintConfig>, task: &TaskInfo) -> Result<Box<dyn Operator>> {
        let mut prefix = config.identifier.clone().unwrap_or_default();
        if task.parallelism > 1 {
            if !prefix.is_empty() {
                prefix.push(':');
            }
            prefix.push_str(&(task.subtask + 1).to_string());
        }
        if !prefix.is_empty() {
            prefix.push_str("> ");
        }
        Ok(Box::new(PrintOperator {
            config: Arc::clone(config),
            prefix,
            buf: Vec::new(),
        }))
    }
}

/// Writes `batch`'s rows as Flink prints rows: `+I[1001, auction, null]`, one per line.
pub fn print_rows(batch: &Batch, prefix: &str, out: &mut Vec<u8>) -> Result<()> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Int64Type, TimeUnit};
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let rows = batch.user_columns();
    let options = FormatOptions::default().with_null("null");
    /// How one column prints: Arrow's display, or (for a TIMESTAMP without time zone:
    /// its values as integers, units per second) as Java's `LocalDateTime.toString`,
    /// which is what Flink prints.
    enum Column<'a> {
        Arrow(ArrayFormatter<'a>),
        Timestamp(arrow::array::ArrayRef, i64),
    }
    let columns = rows
        .columns()
        .iter()
        .map(|c| -> Result<Column<'_>> {
            Ok(match c.data_type() {
                DataType::Timestamp(unit, None) => {
                    let per_second = match unit {
                        TimeUnit::Second => 1,
                        TimeUnit::Millisecond => 1_000,
                        TimeUnit::Microsecond => 1_000_000,
                        TimeUnit::Nanosecond => 1_000_000_000,
                    };
                    Column::Timestamp(arrow::compute::cast(c, &DataType::Int64)?, per_second)
                }
                _ => Column::Arrow(ArrayFormatter::try_new(c.as_ref(), &options)?),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let fail =
        |e: std::io::Error| SluiceError::internal("formatting a printed row failed").with_source(e);
    for (i, kind) in batch.kinds().enumerate() {
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(kind.short().as_bytes());
        out.push(b'[');
        for (c, col) in columns.iter().enumerate() {
            if c > 0 {
                out.extend_from_slice(b", ");
            }
            match col {
                Column::Arrow(f) => write!(out, "{}", f.value(i)).map_err(fail)?,
                Column::Timestamp(a, _) if a.is_null(i) => out.extend_from_slice(b"null"),
                Column::Timestamp(a, per_second) => {
                    java_local_date_time(a.as_primitive::<Int64Type>().value(i), *per_second, out)
                }
            }
        }
        out.extend_from_slice(b"]\n");
    }
    Ok(())
}

/// `value` (in units of which there are `per_second` in a second, since the epoch) as
/// Java's `LocalDateTime.toString` writes it: `2024-05-01T10:00` when seconds and
/// fraction are zero, `…T10:00:05` when the fraction is, otherwise with 3, 6 or 9
/// fraction digits, as few as show it exactly.
fn java_local_date_time(value: i64, per_second: i64, out: &mut Vec<u8>) {
    let secs = value.div_euclid(per_second);
    let nanos = value.rem_euclid(per_second) * (1_000_000_000 / per_second);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = sluice_types::civil_date(days);
    let (h, m, s) = (sod / 3_600, sod % 3_600 / 60, sod % 60);
    let _ = write!(out, "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}");
    if s != 0 || nanos != 0 {
        let _ = write!(out, ":{s:02}");
    }
    if nanos != 0 {
        let _ = match (nanos % 1_000_000, nanos % 1_000) {
            (0, _) => write!(out, ".{:03}", nanos / 1_000_000),
            (_, 0) => write!(out, ".{:06}", nanos / 1_000),
            _ => write!(out, ".{nanos:09}"),
        };
    }
}

#[async_trait]
impl Operator for PrintOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.config.input)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<()> {
        self.buf.clear();
        print_rows(&batch, &self.prefix, &mut self.buf)?;
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        lock.write_all(&self.buf)
            .and_then(|_| lock.flush())
            .map_err(|e| SluiceError::external("writing to standard output failed").with_source(e))
    }
}

/// Sink specs for the Rust API.
///
/// ```
/// use sluice_connectors::{BlackholeSink, PrintSink};
/// assert_eq!(BlackholeSink::new().into_spec().connector, "blackhole");
/// assert_eq!(PrintSink::new().identifier("out").into_spec().options["print-identifier"], "out");
/// ```
#[derive(Clone, Debug, Default)]
pub struct BlackholeSink;

impl BlackholeSink {
    /// A blackhole sink.
    pub fn new() -> Self {
        Self
    }

    /// The plan's connector spec.
    pub fn into_spec(self) -> ConnectorSpec {
        ConnectorSpec::new("blackhole")
    }
}

/// A print (stdout) sink spec.
#[derive(Clone, Debug, Default)]
pub struct PrintSink {
    identifier: Option<String>,
}

impl PrintSink {
    /// A print sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Prefix each line with `identifier> `.
    pub fn identifier(mut self, id: impl Into<String>) -> Self {
        self.identifier = Some(id.into());
        self
    }

    /// The plan's connector spec.
    pub fn into_spec(self) -> ConnectorSpec {
        let s = ConnectorSpec::new("print");
        match self.identifier {
            Some(id) => s.with_option("print-identifier", id),
            None => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Int8Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    };
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn rows_print_as_flink_prints_them_with_their_kinds() {
        let user = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("k", DataType::Utf8, true),
                Field::new("n", DataType::Int64, false),
            ])),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), Some("a"), None])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        let batch = Batch::from_changes(
            &user,
            Int8Array::from(vec![1, 2, 3]),
            TimestampMillisecondArray::from(vec![0, 0, 0]),
            sluice_types::IngestTime::at(0),
        )
        .unwrap();
        let mut out = Vec::new();
        print_rows(&batch, "out:2> ", &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "out:2> -U[a, 1]\nout:2> +U[a, 2]\nout:2> -D[null, 3]\n"
        );
    }

    #[test]
    fn timestamps_print_as_java_prints_a_local_date_time() {
        let cases = [
            (0, 1_000, "1970-01-01T00:00"),
            (1_714_557_600_000, 1_000, "2024-05-01T10:00"),
            (1_714_557_605_000, 1_000, "2024-05-01T10:00:05"),
            (1_714_557_605_120, 1_000, "2024-05-01T10:00:05.120"),
            (
                1_714_557_605_123_400,
                1_000_000,
                "2024-05-01T10:00:05.123400",
            ),
            (
                1_714_557_605_123_456_789,
                1_000_000_000,
                "2024-05-01T10:00:05.123456789",
            ),
            (-1, 1_000, "1969-12-31T23:59:59.999"),
            (951_782_400_000, 1_000, "2000-02-29T00:00"),
        ];
        for (v, per_second, want) in cases {
            let mut out = Vec::new();
            java_local_date_time(v, per_second, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want, "{v}");
        }
    }
}

/// A sink that hands its batches to the program that runs the job, through a channel:
/// what a SQL client shows of a `SELECT`. Register it under a name (planning needs it
/// there), then [`ChannelSink::open`] before each job that writes to it; the job's sink
/// subtasks take the sender when they start, and the channel ends when they do.
#[derive(Clone)]
pub struct ChannelSink {
    name: &'static str,
    slot: Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Sender<Batch>>>>,
}

impl ChannelSink {
    /// A channel sink registered as `'connector' = name`.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            slot: Arc::default(),
        }
    }

    /// A channel for the next job's rows (holding `capacity` batches: a reader that
    /// falls behind slows the job down).
    pub fn open(&self, capacity: usize) -> tokio::sync::mpsc::Receiver<Batch> {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// Drops the sender kept for jobs not started yet (call once the job started), so
    /// that the channel ends with the job's sinks.
    pub fn close(&self) {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

impl SinkConnector for ChannelSink {
    type Config = SchemaRef;

    fn name(&self) -> &'static str {
        self.name
    }

    fn options(&self) -> &'static [&'static str] {
        &[]
    }

    fn parse(&self, _spec: &ConnectorSpec, input: &SchemaRef) -> Result<SchemaRef> {
        Ok(Arc::clone(input))
    }

    fn accepts_updates(&self, _spec: &ConnectorSpec) -> bool {
        true
    }

    fn create(&self, config: &Arc<SchemaRef>, _task: &TaskInfo) -> Result<Box<dyn Operator>> {
        let tx = self
            .slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| SluiceError::internal("no channel is open for this job's rows"))?;
        Ok(Box::new(ChannelOperator {
            tx,
            schema: Arc::clone(config),
        }))
    }
}

struct ChannelOperator {
    tx: tokio::sync::mpsc::Sender<Batch>,
    schema: SchemaRef,
}

#[async_trait]
impl Operator for ChannelOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<()> {
        // The reader gone (the query stopped): the rows have nowhere to go.
        let _ = self.tx.send(batch).await;
        Ok(())
    }
}

/// A batch's rows as text, as a SQL client shows them: each row's kind (`+I`, `-U`, `+U`,
/// `-D`) and its values (`<NULL>` for none), the first `take` rows.
pub fn rows_as_text(batch: &Batch, take: usize) -> Vec<(String, Vec<String>)> {
    let options = arrow::util::display::FormatOptions::default().with_null("<NULL>");
    let columns: Vec<_> = batch
        .data
        .columns()
        .iter()
        .take(batch.num_user_columns())
        .filter_map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options).ok())
        .collect();
    (0..take.min(batch.num_rows()))
        .map(|i| {
            (
                batch.row_kind(i).short().to_string(),
                columns.iter().map(|f| f.value(i).to_string()).collect(),
            )
        })
        .collect()
}
