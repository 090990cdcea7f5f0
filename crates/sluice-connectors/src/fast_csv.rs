//! A CSV decoder straight into Arrow builders for plain records: no quotes, one line per
//! record, columns of BIGINT, INT, DOUBLE, BOOLEAN, STRING and TIMESTAMP(3). Only the
//! columns the job reads (and the `NOT NULL` ones) are parsed; the others come out
//! null, as with arrow-csv's projection.
//!
//! Like the JSON fast path, it is a fast path only: on anything it does not read
//! exactly as arrow-csv does (a quote anywhere in the chunk, a blank line, another number
//! of fields, a number in another form, a timestamp in another form…) it gives up on the
//! whole chunk, which arrow-csv then decodes, so values, errors and dead letters are
//! arrow-csv's in every case. Property tests hold it to that.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMillisecondBuilder, new_null_array,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use sluice_plan::FieldUse;

/// Builds one column.
enum Column {
    I64(Int64Builder),
    I32(Int32Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
    Ts(TimestampMillisecondBuilder),
    /// A nullable column the job does not read: split off, not parsed, all null.
    Skip(DataType),
}

/// Decodes CSV records of one schema (see the module).
pub(crate) struct FastCsv {
    schema: SchemaRef,
    delimiter: u8,
    /// Which columns are parsed.
    parsed: Vec<bool>,
}

impl FastCsv {
    /// A decoder for `schema` parsing the columns `reads` names and the `NOT NULL` ones,
    /// if each of those is of a type it reads.
    pub(crate) fn new(schema: &SchemaRef, delimiter: u8, reads: &FieldUse) -> Option<Self> {
        // A delimiter that is a quote or a line's end, or not ASCII, is not for this path.
        if !delimiter.is_ascii() || matches!(delimiter, b'"' | b'\n' | b'\r') {
            return None;
        }
        let parsed: Vec<bool> = schema
            .fields()
            .iter()
            .map(|f| !f.is_nullable() || reads.field(f.name()).is_some())
            .collect();
        for (f, &p) in schema.fields().iter().zip(&parsed) {
            let supported = matches!(
                f.data_type(),
                DataType::Int64
                    | DataType::Int32
                    | DataType::Float64
                    | DataType::Boolean
                    | DataType::Utf8
                    | DataType::Timestamp(TimeUnit::Millisecond, None)
            );
            if p && !supported {
                return None;
            }
        }
        Some(Self {
            schema: Arc::clone(schema),
            delimiter,
            parsed,
        })
    }

    fn columns(&self, rows: usize) -> Vec<Column> {
        self.schema
            .fields()
            .iter()
            .zip(&self.parsed)
            .map(|(f, &parsed)| match (parsed, f.data_type()) {
                (false, t) => Column::Skip(t.clone()),
                (true, DataType::Int64) => Column::I64(Int64Builder::with_capacity(rows)),
                (true, DataType::Int32) => Column::I32(Int32Builder::with_capacity(rows)),
                (true, DataType::Float64) => Column::F64(Float64Builder::with_capacity(rows)),
                (true, DataType::Boolean) => Column::Bool(BooleanBuilder::with_capacity(rows)),
                (true, DataType::Utf8) => Column::Str(StringBuilder::with_capacity(rows, rows * 8)),
                (true, _) => Column::Ts(TimestampMillisecondBuilder::with_capacity(rows)),
            })
            .collect()
    }

    /// Exactly `rows` rows from `bytes` (records separated by `\n` or `\r\n`), or `None`
    /// to leave the chunk to arrow-csv.
    pub(crate) fn decode(&self, bytes: &[u8], rows: usize) -> Option<RecordBatch> {
        if memchr::memchr(b'"', bytes).is_some() {
            return None;
        }
        // Checked once (arrow-csv refuses what is not UTF-8); fields are cut at an ASCII
        // delimiter or line end, so each is UTF-8 too.
        let text = std::str::from_utf8(bytes).ok()?;
        let mut columns = self.columns(rows);
        let nullable: Vec<bool> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.is_nullable())
            .collect();
        let last = columns.len().checked_sub(1)?;
        let mut n = 0;
        let mut start = 0;
        while start <= bytes.len() {
            let mut end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
            let next = end + 1;
            if end > start && bytes[end - 1] == b'\r' {
                end -= 1;
            }
            // A blank line: arrow-csv's to judge.
            if end == start || n == rows {
                return None;
            }
            let mut at = start;
            for (c, column) in columns.iter_mut().enumerate() {
                let to = match c == last {
                    true => {
                        if memchr::memchr(self.delimiter, &bytes[at..end]).is_some() {
                            return None;
                        }
                        end
                    }
                    false => at + memchr::memchr(self.delimiter, &bytes[at..end])?,
                };
                column.push(text.get(at..to)?, nullable[c])?;
                at = to + 1;
            }
            n += 1;
            start = next;
        }
        if n != rows {
            return None;
        }
        let columns: Vec<ArrayRef> = columns.into_iter().map(|c| c.finish(rows)).collect();
        RecordBatch::try_new(Arc::clone(&self.schema), columns).ok()
    }
}

impl Column {
    /// One field's value (empty is null, as arrow-csv reads it).
    fn push(&mut self, s: &str, nullable: bool) -> Option<()> {
        if let Column::Skip(_) = self {
            return Some(());
        }
        if s.is_empty() {
            if !nullable {
                return None;
            }
            match self {
                Column::I64(b) => b.append_null(),
                Column::I32(b) => b.append_null(),
                Column::F64(b) => b.append_null(),
                Column::Bool(b) => b.append_null(),
                Column::Str(b) => b.append_null(),
                Column::Ts(b) => b.append_null(),
                Column::Skip(_) => {}
            }
            return Some(());
        }
        match self {
            Column::I64(b) => b.append_value(integer(s.as_bytes())?),
            Column::I32(b) => b.append_value(i32::try_from(integer(s.as_bytes())?).ok()?),
            Column::F64(b) => b.append_value(decimal(s)?),
            Column::Bool(b) => b.append_value(match s {
                _ if s.eq_ignore_ascii_case("true") => true,
                _ if s.eq_ignore_ascii_case("false") => false,
                _ => return None,
            }),
            Column::Str(b) => b.append_value(s),
            Column::Ts(b) => b.append_value(crate::fast_json::timestamp_ms(s.as_bytes())?),
            Column::Skip(_) => {}
        }
        Some(())
    }

    fn finish(self, rows: usize) -> ArrayRef {
        match self {
            Column::I64(mut b) => Arc::new(b.finish()),
            Column::I32(mut b) => Arc::new(b.finish()),
            Column::F64(mut b) => Arc::new(b.finish()),
            Column::Bool(mut b) => Arc::new(b.finish()),
            Column::Str(mut b) => Arc::new(b.finish()),
            Column::Ts(mut b) => Arc::new(b.finish()),
            Column::Skip(t) => new_null_array(&t, rows),
        }
    }
}

/// `-?[0-9]{1,18}` as an i64 (anything else, arrow-csv's to judge).
fn integer(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut v = 0i64;
    for &c in digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + i64::from(d);
    }
    Some(if negative { -v } else { v })
}

/// `-?[0-9]+(.[0-9]+)?` as the nearest f64 (arrow-csv's parser rounds the same way).
fn decimal(s: &str) -> Option<f64> {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (whole, fraction) = body.split_once('.').unwrap_or((body, "1"));
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};
    use proptest::prelude::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("t", DataType::Boolean, true),
            Field::new("i", DataType::Int32, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("k", DataType::Int64, false),
        ]))
    }

    /// arrow-csv's rows, with the columns not parsed made null.
    fn arrow_csv(
        schema: &SchemaRef,
        parsed: &[bool],
        delimiter: u8,
        bytes: &[u8],
    ) -> Option<RecordBatch> {
        let projection: Vec<usize> = (0..parsed.len()).filter(|&i| parsed[i]).collect();
        let mut d = arrow::csv::ReaderBuilder::new(Arc::clone(schema))
            .with_header(false)
            .with_delimiter(delimiter)
            .with_batch_size(1000)
            .with_projection(projection.clone())
            .build_decoder();
        let mut off = 0;
        while off < bytes.len() {
            let n = d.decode(&bytes[off..]).ok()?;
            if n == 0 {
                break;
            }
            off += n;
        }
        d.decode(&[]).ok()?;
        let b = d.flush().ok()??;
        let mut columns = Vec::new();
        let mut next = 0;
        for (i, f) in schema.fields().iter().enumerate() {
            match parsed[i] {
                true => {
                    columns.push(Arc::clone(b.column(next)));
                    next += 1;
                }
                false => columns.push(new_null_array(f.data_type(), b.num_rows())),
            }
        }
        RecordBatch::try_new(Arc::clone(schema), columns).ok()
    }

    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<i32>().prop_map(|v| v.to_string()),
            (-1_000_000i64..1_000_000, 0u32..1000).prop_map(|(w, f)| format!("{w}.{f}")),
            any::<f64>().prop_map(|v| v.to_string()),
            "[a-zé ;]{0,12}",
            prop::sample::select(vec![
                "",
                "true",
                "FALSE",
                "True",
                "yes",
                "+5",
                "007",
                "-",
                "1e3",
                ".5",
                "5.",
                "99999999999999999999",
                "-9223372036854775808",
                "2147483648",
                "NaN",
                "inf",
                " 5",
                "\"q\"",
                "a\"b",
            ])
            .prop_map(String::from),
            timestamp(),
            Just("2015-07-15T00:00:00Z".to_string()),
        ]
    }

    /// A timestamp as Flink's CSV format writes one.
    fn timestamp() -> impl Strategy<Value = String> {
        (
            1970i32..2100,
            1u32..13,
            1u32..29,
            0u32..24,
            0u32..60,
            0u32..60,
            0u32..1000,
        )
            .prop_map(|(y, mo, d, h, mi, s, ms)| {
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{ms:03}")
            })
    }

    /// A record of the schema's types (empty fields among them), mostly.
    fn typed_record() -> impl Strategy<Value = Vec<String>> {
        let or_empty = |s: BoxedStrategy<String>| prop_oneof![5 => s, 1 => Just(String::new())];
        (
            or_empty((-BIG..BIG).prop_map(|v| v.to_string()).boxed()),
            or_empty(
                (-1_000_000i64..1_000_000, 0u32..100_000)
                    .prop_map(|(w, f)| format!("{w}.{f}"))
                    .boxed(),
            ),
            "[a-zé ]{0,12}",
            or_empty(
                prop::sample::select(vec!["true", "false", "TRUE"])
                    .prop_map(String::from)
                    .boxed(),
            ),
            or_empty(any::<i32>().prop_map(|v| v.to_string()).boxed()),
            or_empty(timestamp().boxed()),
            (-BIG..BIG).prop_map(|v| v.to_string()),
        )
            .prop_map(|(a, b, s, t, i, ts, k)| vec![a, b, s, t, i, ts, k])
    }

    /// Integers of up to 18 digits (longer ones are left to arrow-csv).
    const BIG: i64 = 999_999_999_999_999_999;

    #[test]
    fn plain_records_decode_as_arrow_csv_decodes_them() {
        let s = schema();
        let text = "1,2.5,x,true,7,2015-07-15 00:00:00.338,9\n,,,,,,10\r\n-3,-0.25,é y,false,-8,2015-07-15T00:00:01,11";
        let fast = FastCsv::new(&s, b',', &FieldUse::All).unwrap();
        let got = fast.decode(text.as_bytes(), 3).expect("plain records");
        assert_eq!(Some(got), arrow_csv(&s, &[true; 7], b',', text.as_bytes()));
        // A quote, a blank line, a missing field: arrow-csv's to judge.
        assert!(fast.decode(b"1,2,\"x\",true,7,,9", 1).is_none());
        assert!(
            fast.decode(b"1,2,x,true,7,,9\n\n1,2,x,true,7,,9", 2)
                .is_none()
        );
        assert!(fast.decode(b"1,2,x,true,7,9", 1).is_none());
        assert!(fast.decode(b"1,2,x,true,7,,9,", 1).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// Records of plain values of the schema's types take the fast path.
        #[test]
        fn typed_records_take_the_fast_path(
            records in prop::collection::vec(typed_record(), 1..6),
        ) {
            let s = schema();
            let text = records.iter().map(|r| r.join(",")).collect::<Vec<_>>().join("\n");
            let got = FastCsv::new(&s, b',', &FieldUse::All)
                .unwrap()
                .decode(text.as_bytes(), records.len());
            prop_assert!(got.is_some(), "{}", text);
            prop_assert_eq!(got, arrow_csv(&s, &[true; 7], b',', text.as_bytes()), "{}", text);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Whatever a chunk holds, the fast path gives arrow-csv's rows (with the columns
        /// not read null) or gives up.
        #[test]
        fn never_differs_from_arrow_csv(
            records in prop::collection::vec(
                prop_oneof![
                    4 => typed_record(),
                    1 => prop::collection::vec(field(), 6..8),
                ],
                1..6,
            ),
            reads_all in any::<bool>(),
            delimiter in prop::sample::select(vec![b',', b';', b'|', b'\t']),
            crlf in any::<bool>(),
        ) {
            let s = schema();
            let reads = match reads_all {
                true => FieldUse::All,
                false => FieldUse::Fields(
                    [("a".to_string(), FieldUse::All), ("ts".to_string(), FieldUse::All)].into(),
                ),
            };
            let d = char::from(delimiter).to_string();
            let text = records
                .iter()
                .enumerate()
                .map(|(n, r)| {
                    let mut fields = r.clone();
                    fields.truncate(6);
                    // The NOT NULL column, mostly well-formed.
                    fields.push(r.get(6).cloned().unwrap_or_else(|| n.to_string()));
                    fields.join(&d)
                })
                .collect::<Vec<_>>()
                .join(if crlf { "\r\n" } else { "\n" });
            let fast = FastCsv::new(&s, delimiter, &reads).unwrap();
            if let Some(got) = fast.decode(text.as_bytes(), records.len()) {
                let parsed: Vec<bool> = s
                    .fields()
                    .iter()
                    .map(|f| !f.is_nullable() || reads.field(f.name()).is_some())
                    .collect();
                prop_assert_eq!(Some(got), arrow_csv(&s, &parsed, delimiter, text.as_bytes()), "{}", text);
            }
        }
    }
}
