//! Row formats, kept apart from transports: the file connector uses them now, Kafka
//! and others later. Decoding is columnar per chunk of records; a chunk that fails is
//! re-decoded record by record so that only the bad records go to the dead-letter
//! output, each with its position and error.

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray, StructArray};
use arrow::buffer::NullBuffer;
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use sluice_plan::FieldUse;
use sluice_runtime::dead_letter::DeadLetter;
use sluice_types::{Batch, Result, RowKind, SluiceError};

use crate::options::OptionReader;

/// A text or binary row format.
#[derive(Clone, Debug, PartialEq)]
pub enum Format {
    /// Comma (or other) separated values, one record per line.
    Csv {
        /// Field delimiter.
        delimiter: u8,
        /// Whether the first line of each file is a header (skipped on read, written on write).
        header: bool,
    },
    /// One JSON object per line.
    Json,
    /// Apache Parquet.
    Parquet,
    /// A changelog as Debezium JSON lines: `{"before": …, "after": …, "op": …}` per
    /// change. Read, each change becomes its rows with their kinds (`c`/`r`: `+I` of
    /// `after`; `u`: `-U` of `before`, `+U` of `after`; `d`: `-D` of `before`); the schema
    /// given to the decoder is the row image's columns then `_rowkind`.
    DebeziumJson,
}

/// Option keys of the filesystem connector: `path` and the format's options.
pub const FILE_OPTIONS: &[&str] = &[
    "path",
    "format",
    "csv.field-delimiter",
    "csv.header",
    "json.ignore-parse-errors",
    "json.fail-on-missing-field",
    "json.timestamp-format.standard",
];

/// Flink's JSON format options, as far as they change what Sluice does.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct JsonOptions {
    /// `'json.ignore-parse-errors' = 'false'` said explicitly: an undecodable record fails
    /// the job (as Flink's default). Unset: it goes to the dead-letter output (Sluice's
    /// default); `'true'`: the same (skipped, and reported there).
    pub fail_on_parse_error: bool,
    /// `'json.timestamp-format.standard' = 'SQL'`: timestamps are written
    /// `2024-01-01 12:00:00.123`; `'ISO-8601'` (and unset) writes `2024-01-01T12:00:00.123`.
    pub sql_timestamps: bool,
    /// `'json.fail-on-missing-field' = 'true'`: a record without one of the table's fields
    /// (nested ones too) fails the job; otherwise the field reads as NULL.
    pub fail_on_missing_field: bool,
}

impl JsonOptions {
    /// Reads the `json.*` options.
    pub fn from_options(o: &OptionReader<'_>) -> Result<Self> {
        let fail_on_missing_field = o.bool_or("json.fail-on-missing-field", false)?;
        if fail_on_missing_field && o.bool_or("json.ignore-parse-errors", false)? {
            return Err(SluiceError::user(
                "'json.fail-on-missing-field' and 'json.ignore-parse-errors' cannot both be 'true' (as in Flink)",
            ));
        }
        let fail_on_parse_error = match o.str("json.ignore-parse-errors") {
            None => false,
            Some(_) => !o.bool_or("json.ignore-parse-errors", false)?,
        };
        let sql_timestamps = o.choice(
            "json.timestamp-format.standard",
            &["SQL", "ISO-8601"],
            Some("ISO-8601"),
        )? == "SQL";
        Ok(Self {
            fail_on_parse_error,
            sql_timestamps,
            fail_on_missing_field,
        })
    }

    /// With `'json.fail-on-missing-field' = 'true'`: fails on the first of `records` (byte
    /// ranges of `buf`, at `positions`) that lacks a field of `schema`.
    pub fn check_fields(
        &self,
        schema: &Schema,
        buf: &[u8],
        records: &[(usize, usize)],
        positions: &dyn Fn(usize) -> String,
    ) -> Result<()> {
        if !self.fail_on_missing_field {
            return Ok(());
        }
        for (i, &(s, e)) in records.iter().enumerate() {
            if let Some(field) = missing_json_field(schema.fields(), &buf[s..e]) {
                return Err(SluiceError::user(format!(
                    "{}: the record has no field `{field}` ('json.fail-on-missing-field' = 'true'; without it a missing field reads as NULL)",
                    positions(i)
                )));
            }
        }
        Ok(())
    }

    /// Fails on the first of `dead` when undecodable records fail the job.
    pub fn check(&self, dead: &[DeadLetter]) -> Result<()> {
        match (self.fail_on_parse_error, dead.first()) {
            (true, Some(d)) => Err(SluiceError::user(format!(
                "{}: {} ('json.ignore-parse-errors' = 'false'; set it to 'true', or leave it out, to route bad records to the dead-letter output)",
                d.position, d.error
            ))),
            _ => Ok(()),
        }
    }

    /// `rows` as they are written: with `SQL` timestamps, every top-level timestamp
    /// column as text `yyyy-MM-dd HH:mm:ss.SSS`.
    pub fn for_writing(&self, rows: RecordBatch) -> Result<RecordBatch> {
        let written_here = |t: &DataType| match t {
            // Zone-less timestamps are formatted here (fast); with a zone as arrow
            // writes them (ISO-8601), or that with a space (SQL).
            DataType::Timestamp(_, None) => true,
            DataType::Timestamp(_, Some(_)) => self.sql_timestamps,
            _ => false,
        };
        if !rows
            .schema()
            .fields()
            .iter()
            .any(|f| written_here(f.data_type()))
        {
            return Ok(rows);
        }
        let mut fields = Vec::with_capacity(rows.num_columns());
        let mut columns = Vec::with_capacity(rows.num_columns());
        for (f, c) in rows.schema().fields().iter().zip(rows.columns()) {
            match f.data_type() {
                DataType::Timestamp(unit, None) => {
                    fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
                    let text = timestamps_text(c, *unit, self.sql_timestamps)?;
                    columns.push(Arc::new(text) as arrow::array::ArrayRef);
                }
                DataType::Timestamp(_, Some(_)) if self.sql_timestamps => {
                    let iso = arrow::compute::cast(c, &DataType::Utf8)?;
                    let iso = iso
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .ok_or_else(|| SluiceError::internal("a timestamp did not cast to text"))?;
                    let sql: StringArray = iso
                        .iter()
                        .map(|v| v.map(|v| v.replacen('T', " ", 1)))
                        .collect();
                    fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
                    columns.push(Arc::new(sql) as arrow::array::ArrayRef);
                }
                _ => {
                    fields.push(f.as_ref().clone());
                    columns.push(Arc::clone(c));
                }
            }
        }
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }
}

/// Timestamps as Flink's JSON format writes them: in its SQL standard (`sql`)
/// `yyyy-MM-dd HH:mm:ss` and the fraction of a second without trailing zeros (none when
/// it is zero), e.g. `2024-01-01 00:00:00.12` for 120 ms; in ISO-8601 `yyyy-MM-ddTHH:mm:ss`
/// and a fraction of 3, 6 or 9 digits as needed (`2024-01-01T00:00:00.120`).
fn timestamps_text(
    column: &arrow::array::ArrayRef,
    unit: TimeUnit,
    sql: bool,
) -> Result<StringArray> {
    let values = arrow::compute::cast(column, &DataType::Int64)?;
    let values = values
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .ok_or_else(|| SluiceError::internal("a timestamp did not cast to its integer"))?;
    let mut out = arrow::array::StringBuilder::with_capacity(values.len(), values.len() * 23);
    let mut text = String::with_capacity(32);
    for v in values {
        match v {
            Some(v) => {
                text.clear();
                write_timestamp(&mut text, v, unit, sql);
                out.append_value(&text);
            }
            None => out.append_null(),
        }
    }
    Ok(out.finish())
}

/// Writes one timestamp (`value` in `unit` since the epoch) in Flink's SQL text form
/// (`sql`), or in ISO-8601's.
pub(crate) fn write_timestamp(out: &mut String, value: i64, unit: TimeUnit, sql: bool) {
    use std::fmt::Write;
    let per_second: i64 = match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    };
    let seconds = value.div_euclid(per_second);
    let nanos = value.rem_euclid(per_second) * (1_000_000_000 / per_second);
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = sluice_types::civil_date(days);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}{}{:02}:{:02}:{:02}",
        if sql { ' ' } else { 'T' },
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60
    );
    if nanos == 0 {
        return;
    }
    let (fraction, digits) = fraction_digits(nanos, sql);
    let _ = write!(out, ".{fraction:0digits$}");
}

/// A nonzero fraction of a second (ns) as Flink writes it: the digits and how many
/// (SQL: no trailing zeros; ISO-8601: in groups of three digits).
pub(crate) fn fraction_digits(nanos: i64, sql: bool) -> (i64, usize) {
    let (mut fraction, mut digits) = (nanos, 9);
    let step = if sql { 10 } else { 1_000 };
    while fraction % step == 0 {
        fraction /= step;
        digits -= if sql { 1 } else { 3 };
    }
    (fraction, digits)
}

/// The first of `fields` (a nested one as `outer.inner`) the JSON object `record` lacks;
/// `None` when it has them all, or is not a JSON object (the decoder reports that). A field
/// present as `null` is there.
pub fn missing_json_field(fields: &arrow::datatypes::Fields, record: &[u8]) -> Option<String> {
    fn walk(
        fields: &arrow::datatypes::Fields,
        object: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<String> {
        for f in fields {
            if f.name() == sluice_types::TIMESTAMP_FIELD || f.name() == sluice_types::ROW_KIND_FIELD
            {
                continue;
            }
            match (object.get(f.name()), f.data_type()) {
                (None, _) => return Some(f.name().clone()),
                (Some(serde_json::Value::Object(inner)), DataType::Struct(nested)) => {
                    if let Some(m) = walk(nested, inner) {
                        return Some(format!("{}.{m}", f.name()));
                    }
                }
                _ => {}
            }
        }
        None
    }
    match serde_json::from_slice::<serde_json::Value>(record) {
        Ok(serde_json::Value::Object(o)) => walk(fields, &o),
        _ => None,
    }
}

/// `'csv.field-delimiter'`: one character (`\t` for a tab), `,` by default.
pub(crate) fn csv_delimiter(o: &OptionReader<'_>) -> Result<u8> {
    let d = o.str("csv.field-delimiter").unwrap_or(",");
    match d.as_bytes() {
        [b] => Ok(*b),
        _ if d == "\\t" => Ok(b'\t'),
        _ => Err(SluiceError::user(format!(
            "option `csv.field-delimiter` must be one character, got `{d}`"
        ))),
    }
}

impl Format {
    /// Parses `'format'` and its options.
    pub fn from_options(o: &OptionReader<'_>) -> Result<Self> {
        match o
            .choice("format", &["csv", "json", "parquet", "debezium-json"], None)?
            .as_str()
        {
            "debezium-json" => Ok(Format::DebeziumJson),
            "csv" => Ok(Format::Csv {
                delimiter: csv_delimiter(o)?,
                header: o.bool_or("csv.header", false)?,
            }),
            "json" => Ok(Format::Json),
            _ => Ok(Format::Parquet),
        }
    }

    /// The usual file extension.
    pub fn extension(&self) -> &'static str {
        match self {
            Format::Csv { .. } => "csv",
            Format::Json | Format::DebeziumJson => "jsonl",
            Format::Parquet => "parquet",
        }
    }

    /// Decodes a chunk of line-oriented records (CSV or JSON lines).
    /// `lines[i]` is the byte range of record i in `buf` and `positions[i]` its position.
    /// JSON columns (and nested fields) outside `reads` may come out null.
    pub fn decode_lines(
        &self,
        schema: &SchemaRef,
        reads: &FieldUse,
        buf: &[u8],
        lines: &[(usize, usize)],
        positions: &dyn Fn(usize) -> String,
        dead: &mut Vec<DeadLetter>,
    ) -> Result<Option<RecordBatch>> {
        if lines.is_empty() {
            return Ok(None);
        }
        let start = lines[0].0;
        let end = lines[lines.len() - 1].1;
        if let Ok(b) = self.decode_exact(schema, reads, &buf[start..end], lines.len()) {
            return Ok(Some(b));
        }
        // Slow path: one record at a time, keeping the good ones.
        let mut good = Vec::new();
        for (i, &(s, e)) in lines.iter().enumerate() {
            let mut one = buf[s..e].to_vec();
            one.push(b'\n');
            match self.decode_exact(schema, reads, &one, 1) {
                Ok(b) if b.num_rows() == 1 => good.push(b),
                // One Debezium update is two rows (-U, +U).
                Ok(b) if *self == Format::DebeziumJson && b.num_rows() == 2 => good.push(b),
                Ok(b) => dead.push(DeadLetter {
                    position: positions(i),
                    error: format!("expected one record, decoded {}", b.num_rows()),
                    raw: String::from_utf8_lossy(&buf[s..e]).into_owned(),
                }),
                Err(err) => dead.push(DeadLetter {
                    position: positions(i),
                    error: err.to_string(),
                    raw: String::from_utf8_lossy(&buf[s..e]).into_owned(),
                }),
            }
        }
        if good.is_empty() {
            return Ok(None);
        }
        Ok(Some(concat_batches(schema, &good)?))
    }

    /// Decodes `bytes` (newline-separated records) into exactly `rows` rows, or fails.
    pub(crate) fn decode_exact(
        &self,
        schema: &SchemaRef,
        reads: &FieldUse,
        bytes: &[u8],
        rows: usize,
    ) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
        let batch_size = rows.max(1) + 1;
        if *self == Format::DebeziumJson {
            return decode_debezium(schema, bytes, rows);
        }
        if *self == Format::Json
            && let Some(b) = crate::fast_json::FastJson::reading(schema, reads)
                .and_then(|f| f.decode(bytes, rows))
        {
            return Ok(b);
        }
        if let Format::Csv { delimiter, .. } = self
            && let Some(b) = crate::fast_csv::FastCsv::new(schema, *delimiter, reads)
                .and_then(|f| f.decode(bytes, rows))
        {
            return Ok(b);
        }
        let batch = match self {
            Format::Json | Format::DebeziumJson => {
                let mut d = arrow::json::ReaderBuilder::new(Arc::clone(schema))
                    .with_batch_size(batch_size)
                    .with_strict_mode(false)
                    .build_decoder()?;
                let mut off = 0;
                while off < bytes.len() {
                    let n = d.decode(&bytes[off..])?;
                    if n == 0 {
                        break;
                    }
                    off += n;
                }
                d.flush()?
            }
            Format::Csv { delimiter, .. } => {
                // Only the columns the job reads (and the NOT NULL ones) are parsed; the
                // others come out null (their fields are still split off the line).
                let read: Vec<usize> = (0..schema.fields().len())
                    .filter(|&i| {
                        let f = schema.field(i);
                        !f.is_nullable() || reads.field(f.name()).is_some()
                    })
                    .collect();
                let projected = !read.is_empty() && read.len() < schema.fields().len();
                let mut b = arrow::csv::ReaderBuilder::new(Arc::clone(schema))
                    .with_header(false)
                    .with_delimiter(*delimiter)
                    .with_batch_size(batch_size);
                if projected {
                    b = b.with_projection(read.clone());
                }
                let mut d = b.build_decoder();
                let mut off = 0;
                while off < bytes.len() {
                    let n = d.decode(&bytes[off..])?;
                    if n == 0 {
                        break;
                    }
                    off += n;
                }
                d.decode(&[])?;
                match (d.flush()?, projected) {
                    (Some(b), true) => Some(unprojected(schema, &read, &b)?),
                    (b, _) => b,
                }
            }
            Format::Parquet => {
                return Err(arrow::error::ArrowError::InvalidArgumentError(
                    "parquet is not a line format".into(),
                ));
            }
        };
        let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(schema)));
        if batch.num_rows() != rows {
            return Err(arrow::error::ArrowError::ParseError(format!(
                "decoded {} records from {rows} lines",
                batch.num_rows()
            )));
        }
        Ok(batch)
    }
}

/// `b` (the columns `read` of `schema`) as a batch of `schema`, the others null.
fn unprojected(
    schema: &SchemaRef,
    read: &[usize],
    b: &RecordBatch,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let columns = (0..schema.fields().len())
        .map(|i| match read.iter().position(|&r| r == i) {
            Some(k) => Arc::clone(b.column(k)),
            None => arrow::array::new_null_array(schema.field(i).data_type(), b.num_rows()),
        })
        .collect();
    RecordBatch::try_new(Arc::clone(schema), columns)
}

/// A batch of changes as Debezium's envelope, the way Flink's `debezium-json` writes it:
/// an insert or update-after is `op: c` with the row as `after`; an update-before or a
/// delete is `op: d` with the row as `before` (a consumer applying them in order holds
/// the result). `rows` are the columns to write of `batch`'s rows (rows without kinds
/// are inserts).
///
/// ```text
///  +I[a, 1]  ->  {"before": null, "after": {"k": "a", "n": 1}, "op": "c"}
///  -U[a, 1]  ->  {"before": {"k": "a", "n": 1}, "after": null, "op": "d"}
/// ```
pub fn debezium_envelope(rows: &RecordBatch, batch: &Batch) -> Result<RecordBatch> {
    let added: Vec<bool> = batch.kinds().map(RowKind::is_addition).collect();
    let image = |present: NullBuffer| -> Result<StructArray> {
        Ok(StructArray::try_new(
            rows.schema().fields().clone(),
            rows.columns().to_vec(),
            Some(present),
        )?)
    };
    let after = image(NullBuffer::from(added.clone()))?;
    let before = image(NullBuffer::from(
        added.iter().map(|a| !a).collect::<Vec<_>>(),
    ))?;
    let op = StringArray::from_iter_values(added.iter().map(|&a| if a { "c" } else { "d" }));
    let row = DataType::Struct(rows.schema().fields().clone());
    let schema = Arc::new(Schema::new(vec![
        Field::new("before", row.clone(), true),
        Field::new("after", row, true),
        Field::new("op", DataType::Utf8, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![Arc::new(before), Arc::new(after), Arc::new(op)],
    )?)
}

/// Writes Debezium envelopes as JSON lines, `null` written out as Flink does.
pub fn debezium_writer<W: std::io::Write>(
    out: W,
) -> arrow::json::Writer<W, arrow::json::writer::LineDelimited> {
    arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build(out)
}

/// Decodes `rows` Debezium envelopes into the rows of their changes (see
/// [`Format::DebeziumJson`]); `schema` is the row image's columns, then `_rowkind`.
fn decode_debezium(
    schema: &SchemaRef,
    bytes: &[u8],
    rows: usize,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::array::{Array, AsArray, Int8Array};
    use arrow::error::ArrowError;
    use sluice_types::RowKind;
    let image: arrow::datatypes::Fields = schema.fields()[..schema.fields().len() - 1].into();
    let row = DataType::Struct(image.clone());
    let envelope = Arc::new(Schema::new(vec![
        Field::new("before", row.clone(), true),
        Field::new("after", row, true),
        Field::new("op", DataType::Utf8, true),
    ]));
    let b = Format::Json.decode_exact(&envelope, &FieldUse::All, bytes, rows)?;
    let (before, after, op) = (
        b.column(0).as_struct(),
        b.column(1).as_struct(),
        b.column(2).as_string::<i32>(),
    );
    // (source: 0 before, 1 after; row) per output row, with its kind.
    let mut picks: Vec<(usize, usize)> = Vec::with_capacity(rows);
    let mut kinds: Vec<i8> = Vec::with_capacity(rows);
    for i in 0..b.num_rows() {
        let need = |image: &StructArray, which: &str| match image.is_valid(i) {
            true => Ok(()),
            false => Err(ArrowError::JsonError(format!(
                "op `{}` without `{which}`",
                op.value(i)
            ))),
        };
        match op.is_valid(i).then(|| op.value(i)) {
            Some("c" | "r") => {
                need(after, "after")?;
                picks.push((1, i));
                kinds.push(RowKind::Insert.code());
            }
            Some("u") => {
                need(before, "before")?;
                need(after, "after")?;
                picks.push((0, i));
                kinds.push(RowKind::UpdateBefore.code());
                picks.push((1, i));
                kinds.push(RowKind::UpdateAfter.code());
            }
            Some("d") => {
                need(before, "before")?;
                picks.push((0, i));
                kinds.push(RowKind::Delete.code());
            }
            Some(other) => {
                return Err(ArrowError::JsonError(format!(
                    "unknown Debezium op `{other}`"
                )));
            }
            None => return Err(ArrowError::JsonError("a change without `op`".into())),
        }
    }
    let images: [&dyn Array; 2] = [before, after];
    let picked = arrow::compute::interleave(&images, &picks)?;
    let picked = picked.as_struct();
    let mut columns = picked.columns().to_vec();
    columns.push(Arc::new(Int8Array::from(kinds)));
    RecordBatch::try_new(Arc::clone(schema), columns)
}

#[cfg(test)]
mod tests {
    use super::write_timestamp;
    use arrow::datatypes::TimeUnit;
    use proptest::prelude::*;

    #[test]
    fn csv_parses_only_the_columns_read() {
        use super::{FieldUse, Format};
        use arrow::array::{Array, AsArray};
        use arrow::datatypes::{DataType, Field, Int64Type, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int64, true),
            Field::new("c", DataType::Int64, false),
        ]));
        let csv = Format::Csv {
            delimiter: b',',
            header: false,
        };
        let reads = FieldUse::Fields([("a".to_string(), FieldUse::All)].into());
        // `b` is not a number, but it is not read; `c` is NOT NULL, so always read.
        let b = csv
            .decode_exact(&schema, &reads, b"1,x,3\n4,y,6\n", 2)
            .unwrap();
        assert_eq!(b.schema(), schema);
        assert_eq!(b.column(0).as_primitive::<Int64Type>().values(), &[1, 4]);
        assert_eq!(b.column(1).null_count(), 2);
        assert_eq!(b.column(2).as_primitive::<Int64Type>().values(), &[3, 6]);
        // A bad value in a column read is still an error, as is every one when all are.
        assert!(csv.decode_exact(&schema, &reads, b"z,1,3\n", 1).is_err());
        assert!(
            csv.decode_exact(&schema, &FieldUse::All, b"1,x,3\n", 1)
                .is_err()
        );
    }

    fn text(value: i64, unit: TimeUnit) -> String {
        let mut s = String::new();
        write_timestamp(&mut s, value, unit, true);
        s
    }

    fn iso(value: i64, unit: TimeUnit) -> String {
        let mut s = String::new();
        write_timestamp(&mut s, value, unit, false);
        s
    }

    #[test]
    fn timestamps_are_written_as_flink_writes_them() {
        assert_eq!(text(0, TimeUnit::Millisecond), "1970-01-01 00:00:00");
        assert_eq!(text(120, TimeUnit::Millisecond), "1970-01-01 00:00:00.12");
        assert_eq!(text(-1, TimeUnit::Millisecond), "1969-12-31 23:59:59.999");
        assert_eq!(
            text(1_704_067_200_005, TimeUnit::Millisecond),
            "2024-01-01 00:00:00.005"
        );
        assert_eq!(text(951_782_400, TimeUnit::Second), "2000-02-29 00:00:00");
        assert_eq!(iso(120, TimeUnit::Millisecond), "1970-01-01T00:00:00.120");
        assert_eq!(iso(1_000, TimeUnit::Microsecond), "1970-01-01T00:00:00.001");
        assert_eq!(iso(1, TimeUnit::Microsecond), "1970-01-01T00:00:00.000001");
        assert_eq!(
            text(1_500_000_000_123_456_789, TimeUnit::Nanosecond),
            "2017-07-14 02:40:00.123456789"
        );
    }

    proptest! {
        /// The same calendar as chrono's, the fraction without trailing zeros.
        #[test]
        fn the_calendar_is_chronos(us in -62_135_596_800_000_000i64..253_402_300_799_999_999i64) {
            let t = chrono::DateTime::from_timestamp_micros(us).unwrap().naive_utc();
            let mut want = t.format("%Y-%m-%d %H:%M:%S").to_string();
            let frac = t.format("%f").to_string();
            let frac = frac.trim_end_matches('0');
            if !frac.is_empty() {
                want.push('.');
                want.push_str(frac);
            }
            prop_assert_eq!(text(us, TimeUnit::Microsecond), want);
            // ISO-8601 as arrow (chrono) writes it.
            let want_iso = t.format("%Y-%m-%dT%H:%M:%S%.f").to_string();
            prop_assert_eq!(iso(us, TimeUnit::Microsecond), want_iso);
        }
    }
}
