//! Functions Flink SQL has and DataFusion's library does not, so Flink queries run with
//! few changes: `REGEXP_EXTRACT`, `SPLIT_INDEX`, `DATE_FORMAT`, `HOUR`; and Nexmark's
//! `count_char` UDF, which also shows how a Rust UDF is written and registered
//! ([`crate::SqlContext::register_udf`]).

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int64Array, Int64Builder, StringArray, StringBuilder,
    TimestampMillisecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use datafusion_common::{DataFusionError, Result};
use datafusion_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

fn arrays(args: &[ColumnarValue]) -> Result<Vec<ArrayRef>> {
    ColumnarValue::values_to_arrays(args)
}

fn strings(a: &ArrayRef) -> Result<StringArray> {
    let c = cast(a, &DataType::Utf8)?;
    Ok(c.as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| DataFusionError::Internal("cast to Utf8".into()))?
        .clone())
}

fn ints(a: &ArrayRef) -> Result<Int64Array> {
    let c = cast(a, &DataType::Int64)?;
    Ok(c.as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| DataFusionError::Internal("cast to Int64".into()))?
        .clone())
}

fn millis(a: &ArrayRef) -> Result<TimestampMillisecondArray> {
    let c = cast(a, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    Ok(c.as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .ok_or_else(|| DataFusionError::Internal("cast to Timestamp(ms)".into()))?
        .clone())
}

/// `count_char(s, c)`: how many times the character `c` occurs in `s` (Nexmark q14).
pub fn count_char() -> ScalarUDF {
    create_udf(
        "count_char",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let a = arrays(args)?;
            let (s, c) = (strings(&a[0])?, strings(&a[1])?);
            let mut out = Int64Builder::with_capacity(s.len());
            for i in 0..s.len() {
                match (s.is_null(i), c.is_null(i)) {
                    (false, false) => {
                        let ch = c.value(i).chars().next();
                        out.append_value(ch.map_or(0, |ch| s.value(i).matches(ch).count()) as i64)
                    }
                    _ => out.append_null(),
                }
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }),
    )
}

/// `REGEXP_EXTRACT(s, regex, group)`: the `group`-th capture group of the first match
/// (0: the whole match), NULL when there is no match (Flink's built-in).
pub fn regexp_extract() -> ScalarUDF {
    create_udf(
        "regexp_extract",
        vec![DataType::Utf8, DataType::Utf8, DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let a = arrays(args)?;
            let (s, re, g) = (strings(&a[0])?, strings(&a[1])?, ints(&a[2])?);
            let mut out = StringBuilder::with_capacity(s.len(), s.len() * 8);
            let mut compiled: Option<(String, regex::Regex)> = None;
            for i in 0..s.len() {
                if s.is_null(i) || re.is_null(i) || g.is_null(i) {
                    out.append_null();
                    continue;
                }
                let pattern = re.value(i);
                if compiled.as_ref().is_none_or(|(p, _)| p != pattern) {
                    let r = regex::Regex::new(pattern).map_err(|e| {
                        DataFusionError::Execution(format!("REGEXP_EXTRACT: bad regex: {e}"))
                    })?;
                    compiled = Some((pattern.to_string(), r));
                }
                let (_, r) = compiled.as_ref().expect("invariant: just compiled");
                let group = usize::try_from(g.value(i)).ok();
                match (r.captures(s.value(i)), group) {
                    (Some(c), Some(g)) => match c.get(g) {
                        Some(m) => out.append_value(m.as_str()),
                        None => out.append_null(),
                    },
                    _ => out.append_null(),
                }
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }),
    )
}

/// `SPLIT_INDEX(s, separator, index)`: the `index`-th (from 0) piece of `s` split at
/// `separator`, NULL when there is none (Flink's built-in).
pub fn split_index() -> ScalarUDF {
    create_udf(
        "split_index",
        vec![DataType::Utf8, DataType::Utf8, DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let a = arrays(args)?;
            let (s, sep, idx) = (strings(&a[0])?, strings(&a[1])?, ints(&a[2])?);
            let mut out = StringBuilder::with_capacity(s.len(), s.len() * 8);
            for i in 0..s.len() {
                if s.is_null(i) || sep.is_null(i) || idx.is_null(i) || sep.value(i).is_empty() {
                    out.append_null();
                    continue;
                }
                let piece = usize::try_from(idx.value(i))
                    .ok()
                    .and_then(|n| s.value(i).split(sep.value(i)).nth(n));
                match piece {
                    Some(p) => out.append_value(p),
                    None => out.append_null(),
                }
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }),
    )
}

/// Java `SimpleDateFormat` letters to chrono's, for the patterns people use.
fn java_to_chrono(p: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = p.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let mut n = 1;
        while i + n < chars.len() && chars[i + n] == c {
            n += 1;
        }
        let piece = match (c, n) {
            ('y', 4) => "%Y".to_string(),
            ('y', 2) => "%y".to_string(),
            ('M', 2) => "%m".to_string(),
            ('d', 2) => "%d".to_string(),
            ('H', 2) => "%H".to_string(),
            ('m', 2) => "%M".to_string(),
            ('s', 2) => "%S".to_string(),
            ('S', 3) => "%3f".to_string(),
            ('%', _) => "%%".repeat(n),
            _ => std::iter::repeat_n(c, n).collect(),
        };
        out.push_str(&piece);
        i += n;
    }
    out
}

/// `DATE_FORMAT(ts, 'yyyy-MM-dd HH:mm:ss')`: a timestamp as text, Java pattern letters
/// (Flink's built-in).
pub fn date_format() -> ScalarUDF {
    create_udf(
        "date_format",
        vec![
            DataType::Timestamp(TimeUnit::Millisecond, None),
            DataType::Utf8,
        ],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let a = arrays(args)?;
            let (ts, fmt) = (millis(&a[0])?, strings(&a[1])?);
            let mut out = StringBuilder::with_capacity(ts.len(), ts.len() * 10);
            let mut pattern: Option<(String, Vec<chrono::format::Item<'static>>)> = None;
            for i in 0..ts.len() {
                if ts.is_null(i) || fmt.is_null(i) {
                    out.append_null();
                    continue;
                }
                if pattern.as_ref().is_none_or(|(j, _)| j != fmt.value(i)) {
                    let items = chrono::format::StrftimeItems::new(&java_to_chrono(fmt.value(i)))
                        .parse_to_owned()
                        .map_err(|e| {
                            DataFusionError::Execution(format!("DATE_FORMAT: bad pattern: {e}"))
                        })?;
                    pattern = Some((fmt.value(i).to_string(), items));
                }
                let (_, items) = pattern.as_ref().expect("invariant: just set");
                match ts.value_as_datetime(i) {
                    Some(dt) => {
                        write!(out, "{}", dt.format_with_items(items.iter()))
                            .map_err(|e| DataFusionError::Execution(e.to_string()))?;
                        out.append_value("");
                    }
                    None => out.append_null(),
                }
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }),
    )
}

/// `HOUR(ts)`: the hour of the day, 0–23 (Flink's built-in).
pub fn hour() -> ScalarUDF {
    create_udf(
        "hour",
        vec![DataType::Timestamp(TimeUnit::Millisecond, None)],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let a = arrays(args)?;
            let ts = millis(&a[0])?;
            let out: Int64Array = ts
                .iter()
                .map(|v| v.map(|ms| ms.rem_euclid(86_400_000) / 3_600_000))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}

/// `MOD(a, b)`: the remainder of `a / b`, with the sign of `a`; NULL when `b` is 0
/// (Flink's built-in).
pub fn modulo() -> ScalarUDF {
    create_udf(
        "mod",
        vec![DataType::Int64, DataType::Int64],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let a = arrays(args)?;
            let (x, y) = (ints(&a[0])?, ints(&a[1])?);
            let out: Int64Array = x
                .iter()
                .zip(y.iter())
                .map(|(x, y)| match (x, y) {
                    (Some(x), Some(y)) if y != 0 => Some(x.wrapping_rem(y)),
                    _ => None,
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}

/// `TO_TIMESTAMP_LTZ(epoch, precision)`: epoch seconds (precision 0) or milliseconds
/// (precision 3) as a timestamp (Flink's built-in).
pub fn to_timestamp_ltz() -> ScalarUDF {
    create_udf(
        "to_timestamp_ltz",
        vec![DataType::Int64, DataType::Int64],
        DataType::Timestamp(TimeUnit::Millisecond, None),
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let a = arrays(args)?;
            let (v, p) = (ints(&a[0])?, ints(&a[1])?);
            let mut out = Vec::with_capacity(v.len());
            for i in 0..v.len() {
                out.push(match (v.is_null(i), p.is_null(i)) {
                    (false, false) => match p.value(i) {
                        0 => Some(v.value(i).saturating_mul(1000)),
                        3 => Some(v.value(i)),
                        other => {
                            return Err(DataFusionError::Execution(format!(
                                "TO_TIMESTAMP_LTZ: precision is 0 (seconds) or 3 (milliseconds), not {other}"
                            )));
                        }
                    },
                    _ => None,
                });
            }
            Ok(ColumnarValue::Array(Arc::new(
                TimestampMillisecondArray::from(out),
            )))
        }),
    )
}

/// `PROCTIME()`: the wall clock. In a `SELECT` list it makes the rows' time processing
/// time from there on (a `processing-time` node; windows and lookup joins may use the
/// column); in a `CREATE TABLE`, `p AS PROCTIME()` does the same for the whole table.
pub fn proctime() -> ScalarUDF {
    create_udf(
        "proctime",
        vec![],
        DataType::Timestamp(TimeUnit::Millisecond, None),
        Volatility::Volatile,
        Arc::new(|_args: &[ColumnarValue]| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            Ok(ColumnarValue::Scalar(
                datafusion_common::ScalarValue::TimestampMillisecond(Some(now), None),
            ))
        }),
    )
}

/// The Flink-compatible built-ins registered in every [`crate::SqlContext`].
pub fn flink_builtins() -> Vec<ScalarUDF> {
    vec![
        regexp_extract(),
        split_index(),
        date_format(),
        hour(),
        modulo(),
        to_timestamp_ltz(),
        proctime(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(f: &ScalarUDF, args: Vec<ArrayRef>) -> ArrayRef {
        let values: Vec<ColumnarValue> = args.into_iter().map(ColumnarValue::Array).collect();
        let rows = match &values[0] {
            ColumnarValue::Array(a) => a.len(),
            ColumnarValue::Scalar(_) => 1,
        };
        let arg_fields: Vec<_> = values
            .iter()
            .map(|v| Arc::new(arrow::datatypes::Field::new("x", v.data_type(), true)))
            .collect();
        let types: Vec<DataType> = values.iter().map(|v| v.data_type()).collect();
        let ret = f.return_type(&types).unwrap();
        f.invoke_with_args(datafusion_expr::ScalarFunctionArgs {
            arg_fields,
            args: values,
            number_rows: rows,
            return_field: Arc::new(arrow::datatypes::Field::new("out", ret, true)),
            config_options: Arc::new(Default::default()),
        })
        .unwrap()
        .into_array(rows)
        .unwrap()
    }

    fn s(v: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(v.to_vec()))
    }

    fn i(v: &[i64]) -> ArrayRef {
        Arc::new(Int64Array::from(v.to_vec()))
    }

    #[test]
    fn flink_string_functions() {
        let out = call(
            &regexp_extract(),
            vec![
                s(&[Some("a?channel_id=7&x=1"), Some("none"), None]),
                s(&[Some("(&|^|\\?)channel_id=([^&]*)"); 3]),
                i(&[2, 2, 2]),
            ],
        );
        assert_eq!(
            out.as_any().downcast_ref::<StringArray>().unwrap(),
            &StringArray::from(vec![Some("7"), None, None])
        );
        let out = call(
            &split_index(),
            vec![
                s(&[Some("https://x/a/b"); 2]),
                s(&[Some("/"); 2]),
                i(&[3, 9]),
            ],
        );
        assert_eq!(
            out.as_any().downcast_ref::<StringArray>().unwrap(),
            &StringArray::from(vec![Some("a"), None])
        );
        let out = call(&modulo(), vec![i(&[7, -7, 7]), i(&[3, 3, 0])]);
        assert_eq!(
            out.as_any().downcast_ref::<Int64Array>().unwrap(),
            &Int64Array::from(vec![Some(1), Some(-1), None])
        );
        let out = call(&count_char(), vec![s(&[Some("abcabc")]), s(&[Some("c")])]);
        assert_eq!(
            out.as_any().downcast_ref::<Int64Array>().unwrap().value(0),
            2
        );
    }

    #[test]
    fn dates() {
        let ts: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![
            1_436_918_400_000 + 3_723_000,
        ]));
        let out = call(
            &date_format(),
            vec![Arc::clone(&ts), s(&[Some("yyyy-MM-dd HH:mm:ss")])],
        );
        assert_eq!(
            out.as_any().downcast_ref::<StringArray>().unwrap().value(0),
            "2015-07-15 01:02:03"
        );
        let out = call(
            &to_timestamp_ltz(),
            vec![i(&[1_436_918_400, 5]), i(&[0, 3])],
        );
        assert_eq!(
            out.as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .unwrap(),
            &TimestampMillisecondArray::from(vec![1_436_918_400_000, 5])
        );
        let out = call(&hour(), vec![ts]);
        assert_eq!(
            out.as_any().downcast_ref::<Int64Array>().unwrap().value(0),
            1
        );
    }
}
