//! `'connector' = 'blackhole'` (discards rows; for benchmarks) and `'connector' = 'print'`
//! (JSON lines on standard output, optionally prefixed by `print-identifier`).

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

/// Prints rows to standard output as JSON lines.
pub struct PrintConnector;

/// Parsed print options.
pub struct PrintConfig {
    identifier: Option<String>,
    input: SchemaRef,
}

/// The print sink operator.
pub struct PrintOperator {
    config: Arc<PrintConfig>,
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

    fn create(&self, config: &Arc<PrintConfig>, _task: &TaskInfo) -> Result<Box<dyn Operator>> {
        Ok(Box::new(PrintOperator {
            config: Arc::clone(config),
            buf: Vec::new(),
        }))
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
        {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut self.buf);
            w.write(&batch.user_columns())?;
            w.finish()?;
        }
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        let r = match &self.config.identifier {
            None => lock.write_all(&self.buf),
            Some(id) => self
                .buf
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .try_for_each(|line| {
                    lock.write_all(id.as_bytes())?;
                    lock.write_all(b"> ")?;
                    lock.write_all(line)?;
                    lock.write_all(b"\n")
                }),
        };
        r.and_then(|_| lock.flush())
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
