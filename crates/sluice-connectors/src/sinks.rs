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
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let rows = batch.user_columns();
    let options = FormatOptions::default().with_null("null");
    let formatters = rows
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for (i, kind) in batch.kinds().enumerate() {
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(kind.short().as_bytes());
        out.push(b'[');
        for (c, f) in formatters.iter().enumerate() {
            if c > 0 {
                out.extend_from_slice(b", ");
            }
            write!(out, "{}", f.value(i)).map_err(|e| {
                SluiceError::internal("formatting a printed row failed").with_source(e)
            })?;
        }
        out.extend_from_slice(b"]\n");
    }
    Ok(())
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
}
