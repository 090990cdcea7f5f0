use std::fs::File;
use std::io::{BufReader, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use sluice_plan::ConnectorSpec;
use sluice_runtime::{
    OperatorContext, ReadResult, SourceConnector, SourceReader, Split, SplitPosition,
};
use sluice_types::{Result, SluiceError, TaskInfo};

use crate::format::Format;
use crate::options::OptionReader;
use crate::pacer::Pacer;

/// Parsed options of a file source.
pub struct FileSourceConfig {
    files: Vec<PathBuf>,
    format: Format,
    schema: SchemaRef,
    /// Replay pace (rows per second per subtask's share), for demos and tests.
    rows_per_second: Option<f64>,
    /// Flink's `json.*` options.
    json: crate::format::JsonOptions,
    /// Text files larger than this are read as several splits, each a range of lines.
    split_size: u64,
    /// What the job reads of the rows (the JSON decoder passes over the rest).
    reads: sluice_plan::FieldUse,
    /// Conditions every row the job keeps meets (Parquet skips the row groups whose
    /// statistics rule one out).
    filters: Vec<datafusion_expr::Expr>,
    /// The splits: whole files, or ranges of lines of large text files (found once, when
    /// the job asks for its splits).
    ranges: std::sync::OnceLock<std::result::Result<Vec<Range>, String>>,
}

/// One split of a file source: a file, a range of its lines, or (Parquet) a run of its
/// row groups.
#[derive(Clone, Debug)]
struct Range {
    /// The split's id: the file's path, or `path@start` for a range of a large file
    /// (`path@rgN` for row groups from N on).
    id: String,
    path: PathBuf,
    /// The byte offset of its first line.
    start: u64,
    /// Where its lines end (the next range's first line); `u64::MAX`: the file's end.
    end: u64,
    /// Parquet: the row groups it reads (`None`: all of the file's).
    row_groups: Option<Vec<usize>>,
}

/// A large Parquet file's row groups in runs of about `split_size` compressed bytes
/// (`None`: one split, the whole file).
fn row_group_runs(path: &Path, split_size: u64) -> Result<Option<Vec<Vec<usize>>>> {
    let file = File::open(path).map_err(|e| {
        SluiceError::external(format!("cannot open {}", path.display())).with_source(e)
    })?;
    let meta = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&file)
        .map_err(|e| {
            SluiceError::user(format!("{} is not a readable Parquet file", path.display()))
                .with_source(e)
        })?;
    let groups = meta.row_groups();
    let total: i64 = groups.iter().map(|g| g.compressed_size()).sum();
    if groups.len() < 2 || (total.max(0) as u64) <= split_size {
        return Ok(None);
    }
    let mut runs: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0u64;
    for (i, g) in groups.iter().enumerate() {
        match runs.last_mut() {
            Some(run) if bytes < split_size => run.push(i),
            _ => {
                runs.push(vec![i]);
                bytes = 0;
            }
        }
        bytes += g.compressed_size().max(0) as u64;
    }
    Ok(Some(runs))
}

/// Text files above this size are read as several splits unless `split-size` says.
const DEFAULT_SPLIT_SIZE: u64 = 64 << 20;

/// The splits of `files`: each file whole, but a text file larger than `split_size` in
/// ranges of about that many bytes, each starting at a line's start (found by reading
/// from each multiple of `split_size` to the next newline, not by reading the file).
fn file_ranges(files: &[PathBuf], text: bool, split_size: u64) -> Result<Vec<Range>> {
    use std::io::Read;
    let mut out = Vec::new();
    for path in files {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let whole = Range {
            id: path.display().to_string(),
            path: path.clone(),
            start: 0,
            end: u64::MAX,
            row_groups: None,
        };
        if !text {
            match row_group_runs(path, split_size)? {
                None => out.push(whole),
                Some(runs) => out.extend(runs.into_iter().map(|run| Range {
                    id: format!("{}@rg{}", path.display(), run[0]),
                    row_groups: Some(run),
                    ..whole.clone()
                })),
            }
            continue;
        }
        if size <= split_size {
            out.push(whole);
            continue;
        }
        // The start of the first line at or after each multiple of `split_size`: after
        // the first newline at or after the byte before it.
        let mut starts: Vec<u64> = vec![0];
        let mut f = File::open(path).map_err(|e| {
            SluiceError::external(format!("cannot open {}", path.display())).with_source(e)
        })?;
        let mut buf = vec![0u8; 64 << 10];
        let mut next = split_size;
        'ranges: while next < size {
            let mut at = next - 1;
            f.seek(std::io::SeekFrom::Start(at))?;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break 'ranges;
                }
                if let Some(i) = memchr::memchr(b'\n', &buf[..n]) {
                    let line_start = at + i as u64 + 1;
                    if line_start >= size {
                        break 'ranges;
                    }
                    starts.push(line_start);
                    next = (line_start / split_size + 1) * split_size;
                    break;
                }
                at += n as u64;
            }
        }
        for (k, &start) in starts.iter().enumerate() {
            let end = starts.get(k + 1).copied().unwrap_or(u64::MAX);
            out.push(Range {
                id: format!("{}@{start}", path.display()),
                path: path.clone(),
                start,
                end,
                row_groups: None,
            });
        }
    }
    Ok(out)
}

impl FileSourceConfig {
    /// The file's top-level columns to decode: the declared ones the job reads (and
    /// every `NOT NULL` one); at least one, for the row counts.
    fn parquet_columns(
        &self,
        file: &SchemaRef,
        parquet: &parquet::schema::types::SchemaDescriptor,
    ) -> parquet::arrow::ProjectionMask {
        let mut roots: Vec<usize> = self
            .schema
            .fields()
            .iter()
            .filter(|f| !f.is_nullable() || self.reads.field(f.name()).is_some())
            .filter_map(|f| file.index_of(f.name()).ok())
            .collect();
        if roots.is_empty()
            && let Some(first) = self.schema.fields().first()
            && let Ok(i) = file.index_of(first.name())
        {
            roots.push(i);
        }
        parquet::arrow::ProjectionMask::roots(parquet, roots)
    }

    /// A batch of the file's decoded columns as the table's rows: the declared columns
    /// in their order, those not decoded null.
    fn parquet_batch(&self, b: &RecordBatch) -> Result<RecordBatch> {
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|f| match b.column_by_name(f.name()) {
                Some(c) => Arc::clone(c),
                None => arrow::array::new_null_array(f.data_type(), b.num_rows()),
            })
            .collect();
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
        )?)
    }

    fn ranges(&self) -> Result<&[Range]> {
        let text = self.format != Format::Parquet;
        self.ranges
            .get_or_init(|| {
                file_ranges(&self.files, text, self.split_size).map_err(|e| e.to_string())
            })
            .as_deref()
            .map_err(|e| SluiceError::external(e.clone()))
    }
}

/// Options of the file source: the shared file options and a replay pace.
const SOURCE_OPTIONS: &[&str] = &[
    "path",
    "format",
    "csv.field-delimiter",
    "csv.header",
    "json.ignore-parse-errors",
    "json.fail-on-missing-field",
    "json.timestamp-format.standard",
    "rows-per-second",
    "split-size",
    super::partition::PARTITIONED_BY,
];

/// The file source connector.
pub struct FileSourceConnector;

fn list_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| {
        SluiceError::user(format!("cannot read source path {}", path.display())).with_source(e)
    })?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') || !entry.file_type()?.is_file() {
            continue;
        }
        files.push(entry.path());
    }
    files.sort();
    Ok(files)
}

fn infer_schema(format: &Format, file: &Path) -> Result<SchemaRef> {
    let f = File::open(file)?;
    let mut reader = BufReader::new(f);
    let inferred = match format {
        Format::Json => {
            arrow::json::reader::infer_json_schema_from_seekable(&mut reader, Some(1000))
                .map(|(s, _)| s)
        }
        Format::Csv { delimiter, header } => arrow::csv::reader::Format::default()
            .with_header(*header)
            .with_delimiter(*delimiter)
            .infer_schema(&mut reader, Some(1000))
            .map(|(s, _)| s),
        Format::Parquet | Format::DebeziumJson => unreachable_parquet(),
    };
    reader.rewind()?;
    inferred.map(Arc::new).map_err(|e| {
        SluiceError::user(format!(
            "cannot infer a schema from {}; declare one",
            file.display()
        ))
        .with_source(e)
    })
}

fn unreachable_parquet() -> std::result::Result<arrow::datatypes::Schema, arrow::error::ArrowError>
{
    Err(arrow::error::ArrowError::SchemaError(
        "parquet files carry their own schema".into(),
    ))
}

impl SourceConnector for FileSourceConnector {
    type Config = FileSourceConfig;

    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn options(&self) -> &'static [&'static str] {
        SOURCE_OPTIONS
    }

    fn parse(&self, spec: &ConnectorSpec) -> Result<FileSourceConfig> {
        let o = OptionReader::new("filesystem", spec);
        if o.str(super::partition::PARTITIONED_BY).is_some() {
            return Err(SluiceError::user(
                "reading a PARTITIONED BY table is not supported yet (only writing is): declare the table read without PARTITIONED BY, its partition values are in the directory names",
            ));
        }
        let rows_per_second: Option<f64> = o.parse("rows-per-second")?;
        if rows_per_second.is_some_and(|r| r.is_nan() || r <= 0.0) {
            return Err(SluiceError::user(
                "filesystem option `rows-per-second` must be a positive number",
            ));
        }
        let path = o.path("path")?;
        let format = Format::from_options(&o)?;
        if format == Format::DebeziumJson && spec.schema.is_none() {
            return Err(SluiceError::user(
                "a 'debezium-json' table declares its columns (the row image of each change)",
            ));
        }
        let files = list_files(&path)?;
        let schema = match (&format, &spec.schema) {
            (Format::Parquet, declared) => {
                let Some(first) = files.first() else {
                    return Err(SluiceError::user(format!(
                        "no Parquet files in {}: the schema cannot be read",
                        path.display()
                    )));
                };
                let b =
                    ParquetRecordBatchReaderBuilder::try_new(File::open(first)?).map_err(|e| {
                        SluiceError::user(format!(
                            "{} is not a readable Parquet file",
                            first.display()
                        ))
                        .with_source(e)
                    })?;
                let file_schema = Arc::clone(b.schema());
                match declared {
                    None => file_schema,
                    // The declared columns, each in the file with its type (read by name).
                    Some(d) => {
                        for f in d.fields() {
                            let i = file_schema.index_of(f.name()).map_err(|_| {
                                SluiceError::user(format!(
                                    "declared column `{}` is not in {}",
                                    f.name(),
                                    first.display()
                                ))
                            })?;
                            if file_schema.field(i).data_type() != f.data_type() {
                                return Err(SluiceError::user(format!(
                                    "column `{}` is {} in {}, declared {}",
                                    f.name(),
                                    file_schema.field(i).data_type(),
                                    first.display(),
                                    f.data_type()
                                )));
                            }
                        }
                        Arc::clone(d)
                    }
                }
            }
            // A changelog: the row image's columns, then each row's kind.
            (Format::DebeziumJson, Some(d)) => {
                let mut fields = d.fields().to_vec();
                fields.push(Arc::new(sluice_types::row_kind_field()));
                Arc::new(arrow::datatypes::Schema::new(fields))
            }
            (_, Some(d)) => Arc::clone(d),
            (_, None) => match files.first() {
                Some(f) => infer_schema(&format, f)?,
                None => {
                    return Err(SluiceError::user(format!(
                        "no files in {} and no schema declared",
                        path.display()
                    )));
                }
            },
        };
        let split_size =
            super::partition::size_option(&o, "split-size")?.unwrap_or(DEFAULT_SPLIT_SIZE);
        Ok(FileSourceConfig {
            files,
            format,
            schema,
            rows_per_second,
            json: crate::format::JsonOptions::from_options(&o)?,
            split_size,
            reads: spec.reads.clone(),
            filters: spec.filters.clone(),
            ranges: std::sync::OnceLock::new(),
        })
    }

    fn files(&self, spec: &ConnectorSpec) -> Result<Vec<sluice_runtime::NamedFile>> {
        Ok(vec![sluice_runtime::NamedFile {
            option: "path".to_string(),
            path: OptionReader::new("filesystem", spec).path("path")?,
        }])
    }

    fn schema(&self, config: &FileSourceConfig) -> Result<SchemaRef> {
        Ok(Arc::clone(&config.schema))
    }

    fn splits(&self, config: &FileSourceConfig, _parallelism: usize) -> Result<Vec<Split>> {
        Ok(config
            .ranges()?
            .iter()
            .enumerate()
            .map(|(index, r)| Split::new(r.id.clone(), index))
            .collect())
    }

    fn reader(
        &self,
        config: &Arc<FileSourceConfig>,
        splits: Vec<Split>,
        task: &TaskInfo,
    ) -> Result<Box<dyn SourceReader>> {
        let mut done = Vec::new();
        let mut pending = Vec::new();
        let mut announce = Vec::new();
        for s in splits.into_iter().rev() {
            match FilePosition::of(&s)? {
                Some(FilePosition::Done) => done.push(s.id),
                Some(_) => {
                    // Read side by side before the restore: each holds back event time
                    // from the start, though this reader reads them one after another.
                    announce.push(s.index);
                    pending.push(s);
                }
                None => pending.push(s),
            }
        }
        Ok(Box::new(FileReader {
            config: Arc::clone(config),
            pending,
            current: None,
            current_split: 0,
            current_id: String::new(),
            ended_pending: false,
            announce,
            done,
            lines: Vec::new(),
            pacer: config
                .rows_per_second
                .map(|r| Pacer::new(r / task.parallelism as f64)),
        }))
    }
}

enum Open {
    Lines {
        path: String,
        reader: LineReader,
        /// Lines of the split read (its first line is line 1 of the split).
        line_no: u64,
        /// Where the split starts, and the lines of the file before it once counted (only
        /// a dead letter's `file:line` needs them).
        start: u64,
        lines_before: std::cell::OnceCell<u64>,
        /// Bytes consumed: where the next line starts.
        offset: u64,
        /// Where the split's lines end (`u64::MAX`: at the file's end).
        end: u64,
    },
    Parquet {
        reader: ParquetRecordBatchReader,
        /// Rows read of the row groups read (not of those passed over).
        read: u64,
        /// The row groups read: each one's first row (in the split) and rows.
        runs: Vec<(u64, u64)>,
        /// The split's rows in all.
        total: u64,
    },
}

/// Where a file split stands (the checkpointed position).
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum FilePosition {
    /// Text formats: the byte offset of the next line, and the lines of the split read
    /// (for a whole file, the lines of the file).
    Lines { offset: u64, line: u64 },
    /// Parquet: rows already read.
    Rows { rows: u64 },
    /// Read to the end.
    Done,
}

impl FilePosition {
    fn of(split: &Split) -> Result<Option<Self>> {
        split
            .position
            .as_ref()
            .map(|v| {
                serde_json::from_value(v.clone()).map_err(|e| {
                    SluiceError::user(format!(
                        "checkpointed position of {} is not a file position",
                        split.id
                    ))
                    .with_source(e)
                })
            })
            .transpose()
    }

    fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("invariant: plain enum serialises")
    }
}

/// Reads one subtask's files, one after another.
pub struct FileReader {
    config: Arc<FileSourceConfig>,
    pending: Vec<Split>,
    current: Option<Open>,
    /// Index of the split being read (or last read).
    current_split: usize,
    /// Id of the split being read.
    current_id: String,
    /// The current split ended with the last batch: report its end next.
    ended_pending: bool,
    /// Splits to announce (with an empty batch) before reading.
    announce: Vec<usize>,
    /// Ids of splits read to the end.
    done: Vec<String>,
    lines: Vec<(usize, usize)>,
    pacer: Option<Pacer>,
}

impl FileReader {
    fn open_next(&mut self, max_rows: usize) -> Result<bool> {
        let Some(split) = self.pending.pop() else {
            return Ok(false);
        };
        self.current_split = split.index;
        self.current_id = split.id.clone();
        let resume = FilePosition::of(&split)?;
        let range = self
            .config
            .ranges()?
            .get(split.index)
            .cloned()
            .ok_or_else(|| SluiceError::internal(format!("no file split {}", split.index)))?;
        let path = range.path.clone();
        let mut file = File::open(&path).map_err(|e| {
            SluiceError::external(format!("cannot open {}", path.display())).with_source(e)
        })?;
        self.current = Some(match self.config.format {
            Format::Parquet => {
                let skip = match resume {
                    Some(FilePosition::Rows { rows }) => rows,
                    _ => 0,
                };
                let config = Arc::clone(&self.config);
                let unreadable = |e| {
                    SluiceError::user(format!("{} is not a readable Parquet file", path.display()))
                        .with_source(e)
                };
                let b = ParquetRecordBatchReaderBuilder::try_new(file).map_err(unreadable)?;
                let meta = Arc::clone(b.metadata());
                let groups = range
                    .row_groups
                    .clone()
                    .unwrap_or_else(|| (0..meta.num_row_groups()).collect());
                if let Some(g) = groups.iter().find(|&&g| g >= meta.num_row_groups()) {
                    return Err(SluiceError::user(format!(
                        "{} changed while the job read it: it has no row group {g} any more",
                        path.display()
                    )));
                }
                let kept =
                    super::prune::row_groups_kept(&meta, b.schema(), &config.filters, &groups);
                // The row groups still to read: kept, and not all read before the restore
                // (`skip` rows of the split were; the first may be read in part).
                let (mut runs, mut read_groups, mut offset, mut start) =
                    (Vec::new(), Vec::new(), 0, 0u64);
                for g in groups {
                    let rows = meta.row_group(g).num_rows().max(0) as u64;
                    if start + rows > skip && kept.contains(&g) {
                        let from = skip.saturating_sub(start);
                        if read_groups.is_empty() {
                            offset = from;
                        }
                        runs.push((start + from, rows - from));
                        read_groups.push(g);
                    }
                    start += rows;
                }
                let mask = config.parquet_columns(b.schema(), b.parquet_schema());
                Open::Parquet {
                    reader: b
                        .with_row_groups(read_groups)
                        .with_projection(mask)
                        .with_batch_size(max_rows)
                        .with_offset(offset as usize)
                        .build()
                        .map_err(unreadable)?,
                    read: 0,
                    runs,
                    total: start,
                }
            }
            Format::Csv { .. } | Format::Json | Format::DebeziumJson => {
                let (offset, line_no) = match resume {
                    Some(FilePosition::Lines { offset, line }) => (offset, line),
                    _ => (range.start, 0),
                };
                if offset > 0 {
                    file.seek(std::io::SeekFrom::Start(offset))?;
                }
                let mut reader = LineReader::new(file);
                let mut open = (offset, line_no);
                if let (Format::Csv { header: true, .. }, 0) = (&self.config.format, offset) {
                    open.0 += reader.skip_line()?;
                    open.1 = 1;
                }
                Open::Lines {
                    path: path.display().to_string(),
                    reader,
                    line_no: open.1,
                    offset: open.0,
                    end: range.end,
                    start: range.start,
                    lines_before: std::cell::OnceCell::new(),
                }
            }
        });
        Ok(true)
    }
}

/// Where `read` rows of the row groups `runs` (each one's first row in the split and
/// rows) leave a Parquet split of `total` rows: the row groups passed over count as read
/// once the reading is past them.
fn split_row(runs: &[(u64, u64)], total: u64, read: u64) -> u64 {
    let mut left = read;
    for &(start, rows) in runs {
        if left < rows {
            return start + left;
        }
        left -= rows;
    }
    total
}

/// A text file's bytes read a buffer at a time, lines cut in place (see `read`).
struct LineReader {
    file: File,
    buf: Vec<u8>,
    /// The bytes read and not consumed: `buf[start..end]`.
    start: usize,
    end: usize,
}

impl LineReader {
    fn new(file: File) -> Self {
        Self {
            file,
            buf: vec![0; 1 << 20],
            start: 0,
            end: 0,
        }
    }

    /// Reads more after the bytes not consumed, which move to the front first (the buffer
    /// doubles when they fill it: a line longer than it). 0 at the end of the file.
    fn fill(&mut self) -> std::io::Result<usize> {
        use std::io::Read;
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        loop {
            match self.file.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Consumes one line (a CSV header), returning its length with its newline.
    fn skip_line(&mut self) -> std::io::Result<u64> {
        let mut at = self.start;
        loop {
            if let Some(nl) = memchr::memchr(b'\n', &self.buf[at..self.end]) {
                let len = at + nl + 1 - self.start;
                self.start += len;
                return Ok(len as u64);
            }
            let scanned = self.end - self.start;
            if self.fill()? == 0 {
                let len = self.end - self.start;
                self.start = self.end;
                return Ok(len as u64);
            }
            at = self.start + scanned;
        }
    }
}

/// How many lines of `path` end before byte `offset` (a line start).
fn lines_before_offset(path: &str, offset: u64) -> std::io::Result<u64> {
    use std::io::Read;
    let mut f = File::open(path)?.take(offset);
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 0;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
    }
}

/// Records the line `buf[start..end]` (its newline and carriage return cut off) unless it
/// is blank.
fn push_line(buf: &[u8], start: usize, mut end: usize, lines: &mut Vec<(usize, usize)>) {
    while end > start && matches!(buf[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    if !buf[start..end].iter().all(u8::is_ascii_whitespace) {
        lines.push((start, end));
    }
}

#[async_trait]
impl SourceReader for FileReader {
    fn split_name(&self, split: usize) -> Option<String> {
        let ranges = self.config.ranges().ok()?;
        Some(ranges.get(split)?.id.clone())
    }

    async fn read(&mut self, max_rows: usize, ctx: &mut OperatorContext) -> Result<ReadResult> {
        if let Some(split) = self.announce.pop() {
            return Ok(ReadResult::Batch {
                split,
                rows: RecordBatch::new_empty(Arc::clone(&self.config.schema)),
            });
        }
        let max_rows = match self.pacer.as_mut() {
            Some(p) if !self.ended_pending => {
                let due = p.due().await.min(max_rows as u64) as usize;
                p.emitted(due as u64);
                due
            }
            _ => max_rows,
        };
        loop {
            if std::mem::take(&mut self.ended_pending) {
                return Ok(ReadResult::SplitEnd(self.current_split));
            }
            if self.current.is_none() && !self.open_next(max_rows)? {
                return Ok(ReadResult::End);
            }
            match self.current.as_mut().expect("invariant: opened above") {
                Open::Parquet { reader, read, .. } => match reader.next() {
                    Some(b) => {
                        let b = b.map_err(|e| {
                            SluiceError::external("reading Parquet failed").with_source(e)
                        })?;
                        *read += b.num_rows() as u64;
                        let b = self.config.parquet_batch(&b)?;
                        return Ok(ReadResult::Batch {
                            split: self.current_split,
                            rows: b,
                        });
                    }
                    None => {
                        self.current = None;
                        self.done.push(self.current_id.clone());
                        return Ok(ReadResult::SplitEnd(self.current_split));
                    }
                },
                Open::Lines {
                    path,
                    reader,
                    line_no,
                    offset,
                    end: range_end,
                    start: range_start,
                    lines_before,
                } => {
                    self.lines.clear();
                    // The split's line number of the chunk's first line (the others' are
                    // counted from it when a dead letter needs one).
                    let mut first_line = 0;
                    let mut eof = false;
                    // Lines are cut where they lie in the reader's buffer; more is read in
                    // (after the unfinished line, moved to the front) only before the
                    // first line of a chunk: a chunk is the lines one buffer holds.
                    let mut at = reader.start;
                    loop {
                        // The split's last line read: the next belongs to the next split.
                        if *offset >= *range_end {
                            eof = true;
                            break;
                        }
                        if self.lines.len() >= max_rows {
                            break;
                        }
                        let Some(nl) = memchr::memchr(b'\n', &reader.buf[at..reader.end]) else {
                            if !self.lines.is_empty() {
                                break;
                            }
                            let scanned = at - reader.start;
                            if reader.fill()? > 0 {
                                at = reader.start + scanned;
                                continue;
                            }
                            // The file's last line, without a newline.
                            if reader.end > reader.start {
                                *offset += (reader.end - reader.start) as u64;
                                *line_no += 1;
                                if self.lines.is_empty() {
                                    first_line = *line_no;
                                }
                                push_line(&reader.buf, reader.start, reader.end, &mut self.lines);
                                reader.start = reader.end;
                            }
                            eof = true;
                            break;
                        };
                        let next = at + nl + 1;
                        *offset += (next - reader.start) as u64;
                        *line_no += 1;
                        if self.lines.is_empty() {
                            first_line = *line_no;
                        }
                        push_line(&reader.buf, reader.start, next, &mut self.lines);
                        reader.start = next;
                        at = next;
                    }
                    let buf = &reader.buf;
                    let mut dead = Vec::new();
                    let path_s = path.clone();
                    // A line's number in its file, for a dead letter.
                    let lines = &self.lines;
                    // The last line numbered and its number: lines are asked for in order,
                    // so each newline is counted once however many lines are dead.
                    let counted = std::cell::Cell::new((0usize, first_line));
                    let file_line = |i: usize| -> String {
                        let before = *lines_before
                            .get_or_init(|| lines_before_offset(path, *range_start).unwrap_or(0));
                        let (from, mut number) = match counted.get() {
                            (j, n) if j <= i => (j, n),
                            _ => (0, first_line),
                        };
                        number += memchr::memchr_iter(b'\n', &buf[lines[from].0..lines[i].0])
                            .count() as u64;
                        counted.set((i, number));
                        format!("{path_s}:{}", before + number)
                    };
                    if self.config.format == crate::format::Format::Json {
                        self.config.json.check_fields(
                            &self.config.schema,
                            buf,
                            &self.lines,
                            &file_line,
                        )?;
                    }
                    let batch = self.config.format.decode_lines(
                        &self.config.schema,
                        &self.config.reads,
                        buf,
                        &self.lines,
                        &file_line,
                        &mut dead,
                    )?;
                    self.config.json.check(&dead)?;
                    for d in dead {
                        ctx.dead_letter(d);
                    }
                    if eof {
                        self.done.push(self.current_id.clone());
                    }
                    if let Some(b) = batch {
                        if eof {
                            self.current = None;
                            self.ended_pending = true;
                        }
                        return Ok(ReadResult::Batch {
                            split: self.current_split,
                            rows: b,
                        });
                    }
                    if eof {
                        self.current = None;
                        return Ok(ReadResult::SplitEnd(self.current_split));
                    }
                }
            }
        }
    }

    fn positions(&self) -> Result<Vec<SplitPosition>> {
        let mut out: Vec<SplitPosition> = self
            .done
            .iter()
            .map(|id| SplitPosition {
                split: id.clone(),
                position: FilePosition::Done.to_value(),
            })
            .collect();
        let current = match &self.current {
            Some(Open::Lines {
                offset, line_no, ..
            }) => Some(FilePosition::Lines {
                offset: *offset,
                line: *line_no,
            }),
            Some(Open::Parquet {
                read, runs, total, ..
            }) => Some(FilePosition::Rows {
                rows: split_row(runs, *total, *read),
            }),
            None => None,
        };
        if let Some(p) = current {
            out.push(SplitPosition {
                split: self.current_id.clone(),
                position: p.to_value(),
            });
        }
        // Splits not opened yet are read from where the checkpoint they came from said.
        for s in &self.pending {
            if let Some(p) = &s.position {
                out.push(SplitPosition {
                    split: s.id.clone(),
                    position: p.clone(),
                });
            }
        }
        Ok(out)
    }
}

/// Builds a file source spec for the Rust API.
///
/// ```
/// use sluice_connectors::FileSource;
/// let spec = FileSource::json("data/bids.jsonl").into_spec();
/// assert_eq!(spec.options["format"], "json");
/// ```
#[derive(Clone, Debug)]
pub struct FileSource {
    spec: ConnectorSpec,
}

impl FileSource {
    fn new(path: impl AsRef<Path>, format: &str) -> Self {
        Self {
            spec: ConnectorSpec::new("filesystem")
                .with_option("path", path.as_ref().display())
                .with_option("format", format),
        }
    }

    /// JSON lines.
    pub fn json(path: impl AsRef<Path>) -> Self {
        Self::new(path, "json")
    }

    /// CSV (no header unless [`FileSource::with_header`]).
    pub fn csv(path: impl AsRef<Path>) -> Self {
        Self::new(path, "csv")
    }

    /// Parquet.
    pub fn parquet(path: impl AsRef<Path>) -> Self {
        Self::new(path, "parquet")
    }

    /// Declares the schema.
    pub fn with_schema(mut self, schema: SchemaRef) -> Self {
        self.spec.schema = Some(schema);
        self
    }

    /// Replays the files at `rows` rows per wall-clock second (all subtasks together),
    /// instead of as fast as possible: for demos and tests of long-running jobs.
    pub fn rows_per_second(mut self, rows: f64) -> Self {
        self.spec
            .options
            .insert("rows-per-second".into(), rows.to_string());
        self
    }

    /// Reads a text file larger than `bytes` as several splits, ranges of about that
    /// many bytes of whole lines, which subtasks read side by side (64 MiB by default).
    pub fn split_size(mut self, bytes: u64) -> Self {
        self.spec
            .options
            .insert("split-size".into(), bytes.to_string());
        self
    }

    /// The CSV files start with a header line.
    pub fn with_header(mut self) -> Self {
        self.spec.options.insert("csv.header".into(), "true".into());
        self
    }

    /// The plan's connector spec.
    pub fn into_spec(self) -> ConnectorSpec {
        self.spec
    }
}

#[cfg(test)]
mod tests {
    use super::split_row;

    #[test]
    fn rows_read_of_the_kept_row_groups_are_a_position_in_the_split() {
        // A split of groups of 10, 10, 10, 10 rows; the second and fourth passed over.
        let runs = [(0, 10), (20, 10)];
        assert_eq!(split_row(&runs, 40, 0), 0);
        assert_eq!(split_row(&runs, 40, 5), 5);
        assert_eq!(split_row(&runs, 40, 10), 20, "past the group passed over");
        assert_eq!(split_row(&runs, 40, 15), 25);
        assert_eq!(split_row(&runs, 40, 20), 40, "all read: the split's end");
        // Resumed mid-group: the first run starts where the restore did.
        assert_eq!(split_row(&[(7, 3), (20, 10)], 40, 3), 20);
    }
}
