//! Which row groups of a Parquet file can hold a row the job keeps, found from their
//! statistics and the conditions the job's filter puts on the source's own columns
//! ([`sluice_plan::ConnectorSpec::filters`]): a row group whose minimum and maximum rule
//! a condition out is not read (predicate pushdown).
//!
//! Only comparisons of a column with a literal (`=`, `<`, `<=`, `>`, `>=`, `BETWEEN`),
//! joined by AND, are used; anything else keeps every row group. Floating-point columns
//! are left alone (NaN is not in a row group's statistics but passes `x > 1` in Arrow's
//! order).

use arrow::array::{Array, BooleanArray, Scalar};
use arrow::compute::kernels::{boolean, cmp};
use arrow::datatypes::{DataType, Schema};
use datafusion_common::ScalarValue;
use datafusion_expr::{Between, BinaryExpr, Expr, Operator};
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::file::metadata::ParquetMetaData;

/// One condition on a column: `column op value`.
#[derive(Debug, PartialEq)]
struct Bound {
    column: String,
    op: Operator,
    value: ScalarValue,
}

/// The conditions of `filters` (each true of every row kept) that statistics can test.
fn bounds(filters: &[Expr]) -> Vec<Bound> {
    let mut out = Vec::new();
    for f in filters {
        collect(f, &mut out);
    }
    out
}

fn collect(e: &Expr, out: &mut Vec<Bound>) {
    let mut push = |c: &datafusion_common::Column, op: Operator, v: &ScalarValue| {
        let comparison = matches!(
            op,
            Operator::Eq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
        );
        if comparison && !v.is_null() {
            out.push(Bound {
                column: c.name.clone(),
                op,
                value: v.clone(),
            });
        }
    };
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            collect(left, out);
            collect(right, out);
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(v, _)) => push(c, *op, v),
            (Expr::Literal(v, _), Expr::Column(c)) => {
                if let Some(op) = op.swap() {
                    push(c, op, v)
                }
            }
            _ => {}
        },
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => {
            if let (Expr::Column(c), Expr::Literal(lo, _), Expr::Literal(hi, _)) =
                (expr.as_ref(), low.as_ref(), high.as_ref())
            {
                push(c, Operator::GtEq, lo);
                push(c, Operator::LtEq, hi);
            }
        }
        _ => {}
    }
}

/// `value` as a value of type `to`, when that changes nothing (a comparison with it
/// then means what the filter's does).
fn exactly_as(value: &ScalarValue, to: &DataType) -> Option<ScalarValue> {
    if value.data_type() == *to {
        return Some(value.clone());
    }
    let cast = value.cast_to(to).ok()?;
    (cast.cast_to(&value.data_type()).ok()? == *value).then_some(cast)
}

/// Those of `groups` (row-group indexes of the file `meta` describes, whose columns
/// `schema` gives) that may hold a row meeting every condition of `filters`.
pub(crate) fn row_groups_kept(
    meta: &ParquetMetaData,
    schema: &Schema,
    filters: &[Expr],
    groups: &[usize],
) -> Vec<usize> {
    let mut keep = vec![true; groups.len()];
    let row_groups: Vec<_> = groups.iter().map(|&g| meta.row_group(g)).collect();
    for b in bounds(filters) {
        let Ok(stats) =
            StatisticsConverter::try_new(&b.column, schema, meta.file_metadata().schema_descr())
        else {
            continue;
        };
        let ty = stats.arrow_field().data_type();
        if matches!(
            ty,
            DataType::Float16 | DataType::Float32 | DataType::Float64
        ) {
            continue;
        }
        let Some(value) = exactly_as(&b.value, ty) else {
            continue;
        };
        let Ok(value) = value.to_array() else {
            continue;
        };
        let value = Scalar::new(value);
        let (Ok(mins), Ok(maxes)) = (
            stats.row_group_mins(row_groups.iter().copied()),
            stats.row_group_maxes(row_groups.iter().copied()),
        ) else {
            continue;
        };
        // Where no value between the minimum and the maximum meets the condition.
        let ruled_out = match b.op {
            Operator::Eq => cmp::lt(&maxes, &value)
                .and_then(|below| boolean::or(&below, &cmp::gt(&mins, &value)?)),
            Operator::Lt => cmp::gt_eq(&mins, &value),
            Operator::LtEq => cmp::gt(&mins, &value),
            Operator::Gt => cmp::lt_eq(&maxes, &value),
            Operator::GtEq => cmp::lt(&maxes, &value),
            _ => continue,
        };
        if let Ok(ruled_out) = ruled_out {
            mark(&mut keep, &ruled_out);
        }
        // A row group where the column is all null holds no row that compares true.
        if let Ok(nulls) = stats.row_group_null_counts(row_groups.iter().copied()) {
            for (i, g) in row_groups.iter().enumerate() {
                if nulls.is_valid(i) && nulls.value(i) == g.num_rows().max(0) as u64 {
                    keep[i] = false;
                }
            }
        }
    }
    groups
        .iter()
        .zip(keep)
        .filter_map(|(&g, k)| k.then_some(g))
        .collect()
}

fn mark(keep: &mut [bool], ruled_out: &BooleanArray) {
    for (i, k) in keep.iter_mut().enumerate() {
        if ruled_out.is_valid(i) && ruled_out.value(i) {
            *k = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    };
    use arrow::datatypes::{Field, TimeUnit};
    use datafusion_expr::{col, lit};
    use parquet::arrow::ArrowWriter;
    use parquet::file::metadata::ParquetMetaDataReader;
    use parquet::file::properties::WriterProperties;

    use super::*;

    /// Four row groups of 10 rows: `n` 0–9, 10–19, 20–29, 30–39; `s` "a…", "b…", "c…",
    /// "d…"; `f` like `n`; `z` null but in the last; `t` `n` seconds.
    fn file() -> (ParquetMetaData, Arc<Schema>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
            Field::new("f", DataType::Float64, false),
            Field::new("z", DataType::Int64, true),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        ]));
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(10))
            .build();
        let mut bytes = Vec::new();
        let mut w = ArrowWriter::try_new(&mut bytes, Arc::clone(&schema), Some(props)).unwrap();
        for g in 0..4i64 {
            let n: Vec<i64> = (g * 10..g * 10 + 10).collect();
            let letter = char::from(b'a' + g as u8);
            let columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(n.clone())),
                Arc::new(StringArray::from_iter_values(
                    n.iter().map(|i| format!("{letter}{i}")),
                )),
                Arc::new(Float64Array::from_iter_values(n.iter().map(|&i| i as f64))),
                Arc::new(Int64Array::from_iter(
                    n.iter().map(|&i| (g == 3).then_some(i)),
                )),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    n.iter().map(|&i| i * 1000),
                )),
            ];
            w.write(&RecordBatch::try_new(Arc::clone(&schema), columns).unwrap())
                .unwrap();
        }
        w.close().unwrap();
        let meta = ParquetMetaDataReader::new()
            .parse_and_finish(&bytes::Bytes::from(bytes))
            .unwrap();
        assert_eq!(meta.num_row_groups(), 4);
        (meta, schema)
    }

    fn kept(filters: &[Expr]) -> Vec<usize> {
        let (meta, schema) = file();
        row_groups_kept(&meta, &schema, filters, &[0, 1, 2, 3])
    }

    #[test]
    fn row_groups_whose_statistics_rule_a_condition_out_are_left() {
        assert_eq!(kept(&[]), [0, 1, 2, 3]);
        assert_eq!(kept(&[col("n").eq(lit(15i64))]), [1]);
        assert_eq!(kept(&[col("n").lt(lit(10i64))]), [0]);
        assert_eq!(kept(&[col("n").lt_eq(lit(10i64))]), [0, 1]);
        assert_eq!(kept(&[col("n").gt(lit(29i64))]), [3]);
        assert_eq!(kept(&[col("n").gt_eq(lit(29i64))]), [2, 3]);
        // A literal on the left; two conditions; BETWEEN; a narrower literal type.
        assert_eq!(kept(&[lit(20i64).gt(col("n"))]), [0, 1]);
        assert_eq!(
            kept(&[col("n").gt(lit(5i64)).and(col("n").lt(lit(25i64)))]),
            [0, 1, 2]
        );
        assert_eq!(kept(&[col("n").between(lit(12i64), lit(18i64))]), [1]);
        assert_eq!(kept(&[col("n").eq(lit(35i32))]), [3]);
        assert_eq!(kept(&[col("s").gt_eq(lit("c"))]), [2, 3]);
        // A timestamp in another unit (as `TIMESTAMP '…'` is planned).
        let ten_s = ScalarValue::TimestampNanosecond(Some(10_000_000_000), None);
        assert_eq!(kept(&[col("t").lt(lit(ten_s))]), [0]);
        // A column null all through a row group: no comparison with it is true there.
        assert_eq!(kept(&[col("z").gt(lit(0i64))]), [3]);
    }

    #[test]
    fn conditions_statistics_cannot_decide_keep_every_row_group() {
        // Floating point (NaN is not in the statistics), a literal its column's type
        // cannot hold, an unknown column, a condition that is not a comparison.
        assert_eq!(kept(&[col("f").lt(lit(1.0))]), [0, 1, 2, 3]);
        assert_eq!(kept(&[col("n").gt(lit(38.5))]), [0, 1, 2, 3]);
        assert_eq!(kept(&[col("nope").eq(lit(1i64))]), [0, 1, 2, 3]);
        assert_eq!(
            kept(&[col("n").eq(lit(1i64)).or(col("n").eq(lit(35i64)))]),
            [0, 1, 2, 3]
        );
        assert_eq!(kept(&[col("n").not_eq(lit(5i64))]), [0, 1, 2, 3]);
    }
}
