//! Test helpers: build batches from pretty text, compare pretty-printed output.
//!
//! ```
//! use sluice_testkit::{assert_pretty, batch_from_pretty};
//! let b = batch_from_pretty("
//!     | k:Utf8 | v:Int64 | _timestamp:Ts |
//!     | a      | 1       | 5             |");
//! assert_pretty(&[b], "
//!     +---+---+-------------------------+
//!     | k | v | _timestamp              |
//!     +---+---+-------------------------+
//!     | a | 1 | 1970-01-01T00:00:00.005 |
//!     +---+---+-------------------------+");
//! ```

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::util::pretty::pretty_format_batches;
use sluice_types::{Batch, IngestTime};

pub mod moto;

/// `s` percent-encoded for a URL's path or query (RFC 3986's unreserved characters
/// kept).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Parses a table: a header row of `name:Type` cells (Int64, Float64, Utf8, Bool, Ts
/// for Timestamp(ms)), then rows; an empty cell is null. A `_timestamp:Ts` column must
/// come last. Panics on malformed input (it is test code).
pub fn batch_from_pretty(text: &str) -> Batch {
    let lines: Vec<Vec<String>> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    let (header, rows) = lines.split_first().expect("a header row");
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (i, h) in header.iter().enumerate() {
        let (name, ty) = h.split_once(':').expect("header cells are name:Type");
        let cells: Vec<Option<&str>> = rows
            .iter()
            .map(|r| Some(r[i].as_str()).filter(|c| !c.is_empty()))
            .collect();
        let (dt, col): (DataType, ArrayRef) = match ty {
            "Int64" => (
                DataType::Int64,
                Arc::new(Int64Array::from_iter(
                    cells.iter().map(|c| c.map(|c| c.parse::<i64>().unwrap())),
                )),
            ),
            "Float64" => (
                DataType::Float64,
                Arc::new(Float64Array::from_iter(
                    cells.iter().map(|c| c.map(|c| c.parse::<f64>().unwrap())),
                )),
            ),
            "Utf8" => (
                DataType::Utf8,
                Arc::new(StringArray::from_iter(cells.iter().copied())),
            ),
            "Bool" => (
                DataType::Boolean,
                Arc::new(BooleanArray::from_iter(
                    cells.iter().map(|c| c.map(|c| c == "true")),
                )),
            ),
            "Ts" => (
                DataType::Timestamp(TimeUnit::Millisecond, None),
                Arc::new(TimestampMillisecondArray::from_iter(
                    cells.iter().map(|c| c.map(|c| c.parse::<i64>().unwrap())),
                )),
            ),
            other => panic!("unknown type {other}"),
        };
        fields.push(Field::new(name, dt, name != "_timestamp"));
        columns.push(col);
    }
    let data = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    Batch::try_new(data, IngestTime::at(0)).unwrap()
}

/// Pretty-prints batches (all columns, `_timestamp` included).
pub fn pretty(batches: &[Batch]) -> String {
    let data: Vec<RecordBatch> = batches.iter().map(|b| b.data.clone()).collect();
    pretty_format_batches(&data).unwrap().to_string()
}

/// Pretty-prints record batches.
pub fn pretty_records(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).unwrap().to_string()
}

fn normalize(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Asserts that batches print as `expected` (indentation and blank lines ignored).
#[track_caller]
pub fn assert_pretty(batches: &[Batch], expected: &str) {
    let actual = pretty(batches);
    assert_eq!(
        normalize(&actual),
        normalize(expected),
        "\nactual:\n{actual}\n"
    );
}
