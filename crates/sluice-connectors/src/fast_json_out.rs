//! JSON objects written straight from Arrow columns, row by row, for flat rows of
//! booleans, integers, floats, strings and zone-less timestamps: the bytes Arrow's JSON
//! writer writes for them (after [`crate::format::JsonOptions::for_writing`] for
//! timestamps), without its per-value dispatch, and with timestamps formatted here
//! rather than through a text column. Any other column type: `None`, and the caller
//! uses Arrow's writer.

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, LargeStringArray, PrimitiveArray, RecordBatch,
    StringArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, Schema,
    TimeUnit, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Bool,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F32,
    F64,
    Utf8,
    LargeUtf8,
    Timestamp(TimeUnit),
}

/// Writes rows of one schema as JSON objects.
#[derive(Debug)]
pub(crate) struct JsonRows {
    /// Per column: `"name":` and its kind.
    columns: Vec<(Vec<u8>, Kind)>,
    explicit_nulls: bool,
    sql_timestamps: bool,
}

impl JsonRows {
    /// A writer for `schema`, or `None` when a column is of a type it leaves to Arrow.
    /// `timestamps`: how zone-less timestamps are written (`Some(true)`: Flink's SQL
    /// form); `None`: a timestamp column is left to Arrow too.
    pub(crate) fn new(
        schema: &Schema,
        explicit_nulls: bool,
        timestamps: Option<bool>,
    ) -> Option<Self> {
        let mut columns = Vec::with_capacity(schema.fields().len());
        for f in schema.fields() {
            let kind = match f.data_type() {
                DataType::Boolean => Kind::Bool,
                DataType::Int8 => Kind::I8,
                DataType::Int16 => Kind::I16,
                DataType::Int32 => Kind::I32,
                DataType::Int64 => Kind::I64,
                DataType::UInt8 => Kind::U8,
                DataType::UInt16 => Kind::U16,
                DataType::UInt32 => Kind::U32,
                DataType::UInt64 => Kind::U64,
                DataType::Float32 => Kind::F32,
                DataType::Float64 => Kind::F64,
                DataType::Utf8 => Kind::Utf8,
                DataType::LargeUtf8 => Kind::LargeUtf8,
                DataType::Timestamp(unit, None) if timestamps.is_some() => Kind::Timestamp(*unit),
                _ => return None,
            };
            let mut name = Vec::with_capacity(f.name().len() + 3);
            string(f.name(), &mut name);
            name.push(b':');
            columns.push((name, kind));
        }
        Some(Self {
            columns,
            explicit_nulls,
            sql_timestamps: timestamps.unwrap_or(false),
        })
    }

    /// Appends every row of `batch` to `out`, each row's range to `rows`.
    pub(crate) fn write(
        &self,
        batch: &RecordBatch,
        out: &mut Vec<u8>,
        rows: &mut Vec<(usize, usize)>,
    ) {
        // Each column once as its own type, with its validity (no dispatch per value).
        let cols: Vec<(&Vec<u8>, Col<'_>, Option<&NullBuffer>)> = self
            .columns
            .iter()
            .zip(batch.columns())
            .map(|((name, kind), c)| {
                let nulls = c.nulls().filter(|n| n.null_count() > 0);
                (name, Col::of(*kind, c), nulls)
            })
            .collect();
        let mut text = String::new();
        let mut day = DayCache::default();
        out.reserve(batch.num_rows() * 16 * cols.len());
        for row in 0..batch.num_rows() {
            let start = out.len();
            out.push(b'{');
            let mut first = true;
            for (name, col, nulls) in &cols {
                let null = nulls.is_some_and(|n| n.is_null(row));
                if null && !self.explicit_nulls {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(name);
                if null {
                    out.extend_from_slice(b"null");
                    continue;
                }
                match col {
                    Col::Bool(a) => out.extend_from_slice(match a.value(row) {
                        true => b"true",
                        false => b"false",
                    }),
                    Col::I8(a) => int(a.value(row), out),
                    Col::I16(a) => int(a.value(row), out),
                    Col::I32(a) => int(a.value(row), out),
                    Col::I64(a) => int(a.value(row), out),
                    Col::U8(a) => int(a.value(row), out),
                    Col::U16(a) => int(a.value(row), out),
                    Col::U32(a) => int(a.value(row), out),
                    Col::U64(a) => int(a.value(row), out),
                    Col::F32(a) => float(a.value(row), out),
                    Col::F64(a) => float(a.value(row), out),
                    Col::Utf8(a) => string(a.value(row), out),
                    Col::LargeUtf8(a) => string(a.value(row), out),
                    Col::Timestamp(values, unit) => {
                        let v = values[row];
                        out.push(b'"');
                        if !timestamp(v, *unit, self.sql_timestamps, &mut day, out) {
                            text.clear();
                            crate::format::write_timestamp(
                                &mut text,
                                v,
                                *unit,
                                self.sql_timestamps,
                            );
                            out.extend_from_slice(text.as_bytes());
                        }
                        out.push(b'"');
                    }
                }
            }
            out.push(b'}');
            rows.push((start, out.len()));
        }
    }
}

/// A column as its own type.
enum Col<'a> {
    Bool(&'a BooleanArray),
    I8(&'a PrimitiveArray<Int8Type>),
    I16(&'a PrimitiveArray<Int16Type>),
    I32(&'a PrimitiveArray<Int32Type>),
    I64(&'a PrimitiveArray<Int64Type>),
    U8(&'a PrimitiveArray<UInt8Type>),
    U16(&'a PrimitiveArray<UInt16Type>),
    U32(&'a PrimitiveArray<UInt32Type>),
    U64(&'a PrimitiveArray<UInt64Type>),
    F32(&'a PrimitiveArray<Float32Type>),
    F64(&'a PrimitiveArray<Float64Type>),
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    /// Values in the unit since the epoch.
    Timestamp(&'a [i64], TimeUnit),
}

impl<'a> Col<'a> {
    fn of(kind: Kind, c: &'a ArrayRef) -> Self {
        match kind {
            Kind::Bool => Col::Bool(c.as_boolean()),
            Kind::I8 => Col::I8(c.as_primitive()),
            Kind::I16 => Col::I16(c.as_primitive()),
            Kind::I32 => Col::I32(c.as_primitive()),
            Kind::I64 => Col::I64(c.as_primitive()),
            Kind::U8 => Col::U8(c.as_primitive()),
            Kind::U16 => Col::U16(c.as_primitive()),
            Kind::U32 => Col::U32(c.as_primitive()),
            Kind::U64 => Col::U64(c.as_primitive()),
            Kind::F32 => Col::F32(c.as_primitive()),
            Kind::F64 => Col::F64(c.as_primitive()),
            Kind::Utf8 => Col::Utf8(c.as_string()),
            Kind::LargeUtf8 => Col::LargeUtf8(c.as_string()),
            Kind::Timestamp(unit) => Col::Timestamp(timestamp_values(c, unit), unit),
        }
    }
}

/// The last day a timestamp fell on, and its date (rows of a stream mostly share one).
#[derive(Default)]
struct DayCache(Option<(i64, (i64, i64, i64))>);

impl DayCache {
    fn date(&mut self, days: i64) -> (i64, i64, i64) {
        match self.0 {
            Some((d, ymd)) if d == days => ymd,
            _ => {
                let ymd = sluice_types::civil_date(days);
                self.0 = Some((days, ymd));
                ymd
            }
        }
    }
}

fn timestamp_values(c: &ArrayRef, unit: TimeUnit) -> &[i64] {
    use arrow::datatypes::{
        TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    match unit {
        TimeUnit::Second => c.as_primitive::<TimestampSecondType>().values(),
        TimeUnit::Millisecond => c.as_primitive::<TimestampMillisecondType>().values(),
        TimeUnit::Microsecond => c.as_primitive::<TimestampMicrosecondType>().values(),
        TimeUnit::Nanosecond => c.as_primitive::<TimestampNanosecondType>().values(),
    }
}

fn int<I: itoa::Integer>(v: I, out: &mut Vec<u8>) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(v).as_bytes());
}

/// As Arrow's writer: the shortest text that reads back the same value; NaN and the
/// infinities as `null`.
fn float<F: lexical_core::ToLexical + num_like::Finite>(v: F, out: &mut Vec<u8>) {
    if !v.finite() {
        out.extend_from_slice(b"null");
        return;
    }
    let mut b = [0u8; lexical_core::BUFFER_SIZE];
    out.extend_from_slice(lexical_core::write(v, &mut b));
}

mod num_like {
    pub(crate) trait Finite {
        fn finite(self) -> bool;
    }
    impl Finite for f32 {
        fn finite(self) -> bool {
            self.is_finite()
        }
    }
    impl Finite for f64 {
        fn finite(self) -> bool {
            self.is_finite()
        }
    }
}

/// A JSON string as serde_json writes it: `"` and `\` escaped, control characters as
/// `\b \t \n \f \r` or `\u00XX`, everything else as it is.
fn string(s: &str, out: &mut Vec<u8>) {
    let mut b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    loop {
        let plain = crate::fast_json::plain_run(b);
        out.extend_from_slice(&b[..plain]);
        let Some(&c) = b.get(plain) else {
            break;
        };
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\r' => out.extend_from_slice(b"\\r"),
            c => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xf)]);
            }
        }
        b = &b[plain + 1..];
    }
    out.push(b'"');
}

/// Writes a timestamp as [`crate::format::write_timestamp`] does, for years 0 to 9999;
/// `false` (nothing written) for others.
fn timestamp(value: i64, unit: TimeUnit, sql: bool, day: &mut DayCache, out: &mut Vec<u8>) -> bool {
    let per_second: i64 = match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    };
    let seconds = value.div_euclid(per_second);
    let nanos = value.rem_euclid(per_second) * (1_000_000_000 / per_second);
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = day.date(days);
    if !(0..=9999).contains(&year) {
        return false;
    }
    let two = |v: i64, out: &mut Vec<u8>| {
        out.push(b'0' + (v / 10) as u8);
        out.push(b'0' + (v % 10) as u8);
    };
    two(year / 100, out);
    two(year % 100, out);
    out.push(b'-');
    two(month, out);
    out.push(b'-');
    two(day, out);
    out.push(if sql { b' ' } else { b'T' });
    two(of_day / 3_600, out);
    out.push(b':');
    two(of_day / 60 % 60, out);
    out.push(b':');
    two(of_day % 60, out);
    if nanos == 0 {
        return true;
    }
    let (mut fraction, digits) = crate::format::fraction_digits(nanos, sql);
    out.push(b'.');
    let at = out.len();
    out.resize(at + digits, b'0');
    for i in (0..digits).rev() {
        out[at + i] = b'0' + (fraction % 10) as u8;
        fraction /= 10;
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        BooleanArray, Float32Array, Float64Array, Int8Array, Int32Array, Int64Array,
        LargeStringArray, StringArray, TimestampMicrosecondArray, TimestampMillisecondArray,
        UInt64Array,
    };
    use arrow::datatypes::Field;
    use proptest::prelude::*;

    use super::*;

    /// What Arrow's writer (after `for_writing`) gives, row by row.
    fn arrow_rows(batch: &RecordBatch, explicit_nulls: bool, sql: bool) -> Vec<String> {
        let opts = crate::format::JsonOptions {
            sql_timestamps: sql,
            ..Default::default()
        };
        let b = opts.for_writing(batch.clone()).unwrap();
        let mut buf = Vec::new();
        {
            let mut w = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(explicit_nulls)
                .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
            w.write(&b).unwrap();
            w.finish().unwrap();
        }
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn fast_rows(batch: &RecordBatch, explicit_nulls: bool, sql: bool) -> Vec<String> {
        let w = JsonRows::new(&batch.schema(), explicit_nulls, Some(sql)).unwrap();
        let (mut out, mut rows) = (Vec::new(), Vec::new());
        w.write(batch, &mut out, &mut rows);
        rows.iter()
            .map(|&(s, e)| String::from_utf8(out[s..e].to_vec()).unwrap())
            .collect()
    }

    fn text() -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop_oneof![
            "[ -~]{0,12}",
            "[\\x00-\\x1f\"\\\\a\u{7f}é€😀]{0,8}",
            any::<String>(),
        ])
    }

    proptest! {
        #[test]
        fn rows_are_what_arrows_writer_writes(
            rows in prop::collection::vec(
                (
                    prop::option::of(any::<bool>()),
                    prop::option::of(any::<i8>()),
                    prop::option::of(any::<i32>()),
                    prop::option::of(any::<i64>()),
                    prop::option::of(any::<u64>()),
                    prop::option::of(prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(0.1), Just(1e21), Just(-0.0)]),
                    prop::option::of(any::<f32>()),
                    text(),
                    text(),
                    prop::option::of(-62_135_596_800_000i64..253_402_300_799_999),
                    prop::option::of(prop_oneof![-62_135_596_800_000_000i64..253_402_300_799_999_999, Just(-1_000_000i64 * 86_400 * 366 * 3000)]),
                ),
                0..20,
            ),
            explicit_nulls in any::<bool>(),
            sql in any::<bool>(),
        ) {
            macro_rules! col {
                ($arr:ident, $i:tt) => {
                    Arc::new($arr::from(rows.iter().map(|r| r.$i.clone()).collect::<Vec<_>>())) as ArrayRef
                };
            }
            let schema = Arc::new(Schema::new(vec![
                Field::new("b", DataType::Boolean, true),
                Field::new("i8", DataType::Int8, true),
                Field::new("i \"32\"", DataType::Int32, true),
                Field::new("i64", DataType::Int64, true),
                Field::new("u64", DataType::UInt64, true),
                Field::new("f64", DataType::Float64, true),
                Field::new("f32", DataType::Float32, true),
                Field::new("s", DataType::Utf8, true),
                Field::new("ls", DataType::LargeUtf8, true),
                Field::new("ms", DataType::Timestamp(TimeUnit::Millisecond, None), true),
                Field::new("us", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            ]));
            let batch = RecordBatch::try_new(schema, vec![
                col!(BooleanArray, 0),
                col!(Int8Array, 1),
                col!(Int32Array, 2),
                col!(Int64Array, 3),
                col!(UInt64Array, 4),
                col!(Float64Array, 5),
                col!(Float32Array, 6),
                col!(StringArray, 7),
                col!(LargeStringArray, 8),
                col!(TimestampMillisecondArray, 9),
                col!(TimestampMicrosecondArray, 10),
            ]).unwrap();
            prop_assert_eq!(fast_rows(&batch, explicit_nulls, sql), arrow_rows(&batch, explicit_nulls, sql));
        }
    }

    #[test]
    fn other_types_are_left_to_arrow() {
        let s = Schema::new(vec![Field::new("d", DataType::Date32, true)]);
        assert!(JsonRows::new(&s, false, Some(false)).is_none());
        let s = Schema::new(vec![Field::new(
            "t",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        )]);
        assert!(JsonRows::new(&s, false, None).is_none());
    }
}
