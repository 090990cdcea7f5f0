//! SQL type names as Flink writes them, and which column types an INSERT may write into
//! which without an explicit CAST.

use arrow::datatypes::{DataType, TimeUnit};

/// The SQL name of an Arrow type, as Flink SQL writes it (`BIGINT`, `STRING`,
/// `TIMESTAMP(3)`, `ROW<a INT, b STRING>`).
///
/// ```
/// use arrow::datatypes::{DataType, TimeUnit};
/// use sluice_sql::types::sql_type;
/// assert_eq!(sql_type(&DataType::Int64), "BIGINT");
/// assert_eq!(sql_type(&DataType::Timestamp(TimeUnit::Millisecond, None)), "TIMESTAMP(3)");
/// ```
pub fn sql_type(t: &DataType) -> String {
    let precision = |u: &TimeUnit| match u {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 3,
        TimeUnit::Microsecond => 6,
        TimeUnit::Nanosecond => 9,
    };
    match t {
        DataType::Null => "NULL".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "TINYINT UNSIGNED".into(),
        DataType::UInt16 => "SMALLINT UNSIGNED".into(),
        DataType::UInt32 => "INT UNSIGNED".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float16 | DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "STRING".into(),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => "BYTES".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Time32(u) | DataType::Time64(u) => format!("TIME({})", precision(u)),
        DataType::Timestamp(u, None) => format!("TIMESTAMP({})", precision(u)),
        DataType::Timestamp(u, Some(_)) => format!("TIMESTAMP_LTZ({})", precision(u)),
        DataType::Duration(_) | DataType::Interval(_) => "INTERVAL".into(),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            format!("ARRAY<{}>", sql_type(f.data_type()))
        }
        DataType::Map(f, _) => match f.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => format!(
                "MAP<{}, {}>",
                sql_type(kv[0].data_type()),
                sql_type(kv[1].data_type())
            ),
            other => format!("MAP<{}>", sql_type(other)),
        },
        DataType::Struct(fields) => format!(
            "ROW<{}>",
            fields
                .iter()
                .map(|f| format!("{} {}", f.name(), sql_type(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        DataType::Dictionary(_, v) => sql_type(v),
        other => other.to_string(),
    }
}

/// The kinds of value a column may hold; an INSERT writes a column into one of the same
/// kind (a numeric one into any numeric one, a timestamp into a date or timestamp …) and
/// refuses any other without an explicit CAST, as Flink does.
#[derive(PartialEq, Eq)]
enum Family {
    Null,
    Boolean,
    Numeric,
    Text,
    Bytes,
    Temporal,
    Time,
    Interval,
    Other,
}

fn family(t: &DataType) -> Family {
    match t {
        DataType::Null => Family::Null,
        DataType::Boolean => Family::Boolean,
        t if t.is_numeric() => Family::Numeric,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Family::Text,
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => Family::Bytes,
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => Family::Temporal,
        DataType::Time32(_) | DataType::Time64(_) => Family::Time,
        DataType::Duration(_) | DataType::Interval(_) => Family::Interval,
        DataType::Dictionary(_, v) => family(v),
        _ => Family::Other,
    }
}

/// Whether an INSERT may write a column of type `from` into a sink column of type `to`
/// (converting it): the same kind of value, recursively for rows, arrays and maps.
///
/// ```
/// use arrow::datatypes::DataType;
/// use sluice_sql::types::insertable;
/// assert!(insertable(&DataType::Int32, &DataType::Int64));
/// assert!(!insertable(&DataType::Utf8, &DataType::Int64));
/// ```
pub fn insertable(from: &DataType, to: &DataType) -> bool {
    if from == to {
        return true;
    }
    match (from, to) {
        (DataType::Null, _) => true,
        (
            DataType::List(a) | DataType::LargeList(a) | DataType::FixedSizeList(a, _),
            DataType::List(b) | DataType::LargeList(b) | DataType::FixedSizeList(b, _),
        ) => insertable(a.data_type(), b.data_type()),
        (DataType::Map(a, _), DataType::Map(b, _)) => insertable(a.data_type(), b.data_type()),
        (DataType::Struct(a), DataType::Struct(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b.iter())
                    .all(|(x, y)| insertable(x.data_type(), y.data_type()))
        }
        _ => {
            let f = family(from);
            f != Family::Other && f == family(to)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_value_decide_what_an_insert_may_convert() {
        use DataType::*;
        let ts = |u| Timestamp(u, None);
        for (from, to) in [
            (Int32, Int64),
            (Int64, Int32),
            (Int64, Float64),
            (Decimal128(10, 2), Float64),
            (Utf8View, Utf8),
            (ts(TimeUnit::Microsecond), ts(TimeUnit::Millisecond)),
            (Date32, ts(TimeUnit::Millisecond)),
            (Null, Utf8),
        ] {
            assert!(insertable(&from, &to), "{from} into {to}");
        }
        for (from, to) in [
            (Utf8, Int64),
            (Int64, Utf8),
            (Boolean, Int32),
            (Int64, ts(TimeUnit::Millisecond)),
            (Utf8, ts(TimeUnit::Millisecond)),
            (Binary, Utf8),
        ] {
            assert!(!insertable(&from, &to), "{from} into {to}");
        }
    }
}
