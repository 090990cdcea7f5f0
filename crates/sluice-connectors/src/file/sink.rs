use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use parquet::arrow::ArrowWriter;
use sluice_plan::ConnectorSpec;
use sluice_runtime::{Collector, Operator, OperatorContext, SinkConnector};
use sluice_types::{Batch, Result, SluiceError, TIMESTAMP_FIELD, TaskInfo};

use crate::format::{FILE_OPTIONS, Format};
use crate::options::OptionReader;

/// Parsed options of a file sink.
pub struct FileSinkConfig {
    dir: PathBuf,
    format: Format,
    input: SchemaRef,
}

/// The file sink connector.
pub struct FileSinkConnector;

impl SinkConnector for FileSinkConnector {
    type Config = FileSinkConfig;

    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn options(&self) -> &'static [&'static str] {
        FILE_OPTIONS
    }

    fn parse(&self, spec: &ConnectorSpec, input: &SchemaRef) -> Result<FileSinkConfig> {
        let o = OptionReader::new("filesystem", spec);
        let dir = o.path("path")?;
        let format = Format::from_options(&o)?;
        std::fs::create_dir_all(&dir).map_err(|e| {
            SluiceError::user(format!("cannot create sink directory {}", dir.display()))
                .with_source(e)
        })?;
        Ok(FileSinkConfig {
            dir,
            format,
            input: Arc::clone(input),
        })
    }

    fn create(&self, config: &Arc<FileSinkConfig>, task: &TaskInfo) -> Result<Box<dyn Operator>> {
        let ext = config.format.extension();
        let final_path = config.dir.join(format!("part-{}.{ext}", task.subtask));
        let temp_path = config
            .dir
            .join(format!(".part-{}.{ext}.inprogress", task.subtask));
        let fields: Vec<_> = config
            .input
            .fields()
            .iter()
            .filter(|f| f.name() != TIMESTAMP_FIELD)
            .cloned()
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let file = File::create(&temp_path).map_err(|e| {
            SluiceError::external(format!("cannot create {}", temp_path.display())).with_source(e)
        })?;
        let out = BufWriter::with_capacity(1 << 20, file);
        let writer = match &config.format {
            Format::Csv { delimiter, header } => Writer::Csv(
                arrow::csv::WriterBuilder::new()
                    .with_header(*header)
                    .with_delimiter(*delimiter)
                    .build(out),
            ),
            Format::Json => Writer::Json(arrow::json::LineDelimitedWriter::new(out)),
            Format::Parquet => Writer::Parquet(
                ArrowWriter::try_new(out, Arc::clone(&schema), None).map_err(|e| {
                    SluiceError::internal("cannot start a Parquet file").with_source(e)
                })?,
            ),
        };
        Ok(Box::new(FileSinkOperator {
            writer: Some(writer),
            temp_path,
            final_path,
            input: Arc::clone(&config.input),
        }))
    }
}

enum Writer {
    Csv(arrow::csv::Writer<BufWriter<File>>),
    Json(arrow::json::LineDelimitedWriter<BufWriter<File>>),
    Parquet(ArrowWriter<BufWriter<File>>),
}

/// Writes one subtask's rows to a file, published by rename at the end of input.
pub struct FileSinkOperator {
    writer: Option<Writer>,
    temp_path: PathBuf,
    final_path: PathBuf,
    input: SchemaRef,
}

fn write_err(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> SluiceError {
    SluiceError::external(format!("writing {} failed", path.display())).with_source(e)
}

#[async_trait]
impl Operator for FileSinkOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.input)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<()> {
        let rows = batch.user_columns();
        let path = &self.temp_path;
        match self.writer.as_mut() {
            Some(Writer::Csv(w)) => w.write(&rows).map_err(|e| write_err(path, e)),
            Some(Writer::Json(w)) => w.write(&rows).map_err(|e| write_err(path, e)),
            Some(Writer::Parquet(w)) => w.write(&rows).map_err(|e| write_err(path, e)),
            None => Err(SluiceError::internal("file sink written after close")),
        }
    }

    async fn on_close(
        &mut self,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<()> {
        let path = self.temp_path.clone();
        let file = match self.writer.take() {
            Some(Writer::Csv(w)) => w.into_inner(),
            Some(Writer::Json(mut w)) => {
                w.finish().map_err(|e| write_err(&path, e))?;
                w.into_inner()
            }
            Some(Writer::Parquet(w)) => w.into_inner().map_err(|e| write_err(&path, e))?,
            None => return Ok(()),
        };
        let file = file
            .into_inner()
            .map_err(|e| write_err(&path, e.into_error()))?;
        file.sync_all().map_err(|e| write_err(&path, e))?;
        std::fs::rename(&self.temp_path, &self.final_path).map_err(|e| write_err(&path, e))?;
        Ok(())
    }
}

/// Builds a file sink spec for the Rust API.
///
/// ```
/// use sluice_connectors::FileSink;
/// let spec = FileSink::parquet("out/").into_spec();
/// assert_eq!(spec.connector, "filesystem");
/// ```
#[derive(Clone, Debug)]
pub struct FileSink {
    spec: ConnectorSpec,
}

impl FileSink {
    fn new(dir: impl AsRef<Path>, format: &str) -> Self {
        Self {
            spec: ConnectorSpec::new("filesystem")
                .with_option("path", dir.as_ref().display())
                .with_option("format", format),
        }
    }

    /// JSON lines into directory `dir`.
    pub fn json(dir: impl AsRef<Path>) -> Self {
        Self::new(dir, "json")
    }

    /// CSV into directory `dir` (no header unless [`FileSink::with_header`]).
    pub fn csv(dir: impl AsRef<Path>) -> Self {
        Self::new(dir, "csv")
    }

    /// Parquet into directory `dir`.
    pub fn parquet(dir: impl AsRef<Path>) -> Self {
        Self::new(dir, "parquet")
    }

    /// Write a header line in CSV files.
    pub fn with_header(mut self) -> Self {
        self.spec.options.insert("csv.header".into(), "true".into());
        self
    }

    /// The plan's connector spec.
    pub fn into_spec(self) -> ConnectorSpec {
        self.spec
    }
}
