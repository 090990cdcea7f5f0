//! Accumulators that take values back: what aggregates over updating inputs (a
//! retraction takes a row back out of its group) and bounded OVER frames (a row leaves
//! the frame) are built from.
//!
//! DataFusion's sliding accumulators (`count`, `sum`, `avg`, …) retract; `min` and `max`
//! (whose sliding forms only drop the oldest value) become a counted multiset of the
//! values. Their states round-trip through checkpoints like any accumulator's.

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::DataType;
use datafusion_common::ScalarValue;
use datafusion_expr::Accumulator;
use sluice_types::{Result, SluiceError};

use crate::operators::aggregates::PlannedAggregate;

/// A retractable accumulator for one aggregate.
pub(crate) fn retractable(
    a: &PlannedAggregate,
    arg_types: &[DataType],
) -> Result<Box<dyn Accumulator>> {
    let name = a.function.fun().name().to_ascii_lowercase();
    let dt = arg_types.first().cloned().unwrap_or(DataType::Null);
    let multiset = |reduce| -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(Multiset {
            reduce,
            data_type: dt.clone(),
            values: BTreeMap::new(),
        }))
    };
    if a.function.is_distinct() {
        // MIN/MAX are the same with DISTINCT; COUNT(DISTINCT x) counts the multiset's keys.
        return match (name.as_str(), arg_types.len()) {
            ("min", _) => multiset(Reduce::Min),
            ("max", _) => multiset(Reduce::Max),
            ("count", 1) => multiset(Reduce::CountDistinct),
            _ => Err(SluiceError::user(format!(
                "`{}` with DISTINCT cannot take values back yet, so it cannot aggregate an updating input (COUNT(DISTINCT x), MIN and MAX can); aggregate the distinct values in an inner GROUP BY first",
                a.function.name()
            ))),
        };
    }
    if name == "min" || name == "max" {
        return multiset(if name == "max" {
            Reduce::Max
        } else {
            Reduce::Min
        });
    }
    let acc = a.function.create_sliding_accumulator().map_err(|e| {
        SluiceError::user(format!(
            "`{}` cannot take values back ({e})",
            a.function.name()
        ))
    })?;
    if !acc.supports_retract_batch() {
        return Err(SluiceError::user(format!(
            "`{}` cannot take values back, so it cannot aggregate an updating input or a bounded OVER frame; use COUNT, SUM, AVG, MIN or MAX",
            a.function.name()
        )));
    }
    Ok(acc)
}

fn df_err(e: datafusion_common::DataFusionError) -> SluiceError {
    SluiceError::user("aggregate computation failed").with_source(e)
}

/// Adds (`add`) one row's argument values (per aggregate, per argument) to
/// accumulators, or takes them back out.
pub(crate) fn apply_row(
    accs: &mut [Box<dyn Accumulator>],
    args: &[Vec<ScalarValue>],
    add: bool,
) -> Result<()> {
    for (acc, values) in accs.iter_mut().zip(args) {
        let arrays = values
            .iter()
            .map(|v| v.to_array().map_err(df_err))
            .collect::<Result<Vec<_>>>()?;
        match add {
            true => acc.update_batch(&arrays),
            false => acc.retract_batch(&arrays),
        }
        .map_err(df_err)?;
    }
    Ok(())
}

/// Row `row`'s argument values: per aggregate, per argument.
pub(crate) fn row_args(args: &[Vec<ArrayRef>], row: usize) -> Result<Vec<Vec<ScalarValue>>> {
    args.iter()
        .map(|a| {
            a.iter()
                .map(|c| ScalarValue::try_from_array(c, row).map_err(df_err))
                .collect()
        })
        .collect()
}

/// What a [`Multiset`] answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Reduce {
    Min,
    Max,
    /// How many distinct (non-null) values it holds.
    CountDistinct,
}

/// `min`, `max` or `count(DISTINCT …)` that can take any value back: a counted multiset
/// of the values.
#[derive(Debug)]
struct Multiset {
    reduce: Reduce,
    data_type: DataType,
    values: BTreeMap<Ordered, u64>,
}

/// A scalar ordered as SQL orders values of one type (NaN equal to itself).
#[derive(Debug, Clone, PartialEq)]
struct Ordered(ScalarValue);

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .partial_cmp(&other.0)
            .unwrap_or(std::cmp::Ordering::Equal)
    }
}

impl Accumulator for Multiset {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion_common::Result<()> {
        let a = &values[0];
        for i in 0..a.len() {
            if a.is_valid(i) {
                *self
                    .values
                    .entry(Ordered(ScalarValue::try_from_array(a, i)?))
                    .or_insert(0) += 1;
            }
        }
        Ok(())
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> datafusion_common::Result<()> {
        let a = &values[0];
        for i in 0..a.len() {
            if a.is_valid(i) {
                let k = Ordered(ScalarValue::try_from_array(a, i)?);
                if let Some(c) = self.values.get_mut(&k) {
                    *c -= 1;
                    if *c == 0 {
                        self.values.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn evaluate(&mut self) -> datafusion_common::Result<ScalarValue> {
        let v = match self.reduce {
            Reduce::CountDistinct => return Ok(ScalarValue::Int64(Some(self.values.len() as i64))),
            Reduce::Max => self.values.last_key_value(),
            Reduce::Min => self.values.first_key_value(),
        };
        match v {
            Some((k, _)) => Ok(k.0.clone()),
            None => ScalarValue::try_from(&self.data_type),
        }
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.values.len() * 64
    }

    /// The multiset: its distinct values and how often each occurs.
    fn state(&mut self) -> datafusion_common::Result<Vec<ScalarValue>> {
        let values: Vec<ScalarValue> = self.values.keys().map(|k| k.0.clone()).collect();
        let counts: Vec<ScalarValue> = self
            .values
            .values()
            .map(|&c| ScalarValue::UInt64(Some(c)))
            .collect();
        Ok(vec![
            ScalarValue::List(ScalarValue::new_list_nullable(&values, &self.data_type)),
            ScalarValue::List(ScalarValue::new_list_nullable(&counts, &DataType::UInt64)),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion_common::Result<()> {
        use arrow::array::AsArray;
        let (values, counts) = (states[0].as_list::<i32>(), states[1].as_list::<i32>());
        for row in 0..values.len() {
            let (v, c) = (values.value(row), counts.value(row));
            let c = c.as_primitive::<arrow::datatypes::UInt64Type>();
            for i in 0..v.len().min(c.len()) {
                *self
                    .values
                    .entry(Ordered(ScalarValue::try_from_array(&v, i)?))
                    .or_insert(0) += c.value(i);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use std::sync::Arc;

    #[test]
    fn the_min_max_multiset_takes_values_back_and_survives_its_state() {
        let mut max = Multiset {
            reduce: Reduce::Max,
            data_type: DataType::Int64,
            values: BTreeMap::new(),
        };
        let a: ArrayRef = Arc::new(Int64Array::from(vec![Some(5), Some(9), None, Some(9)]));
        max.update_batch(&[a]).unwrap();
        let nine: ArrayRef = Arc::new(Int64Array::from(vec![9]));
        max.retract_batch(&[Arc::clone(&nine)]).unwrap();
        assert_eq!(max.evaluate().unwrap(), ScalarValue::Int64(Some(9)));
        let state: Vec<ArrayRef> = max
            .state()
            .unwrap()
            .into_iter()
            .map(|v| v.to_array().unwrap())
            .collect();
        let mut back = Multiset {
            reduce: Reduce::Max,
            data_type: DataType::Int64,
            values: BTreeMap::new(),
        };
        back.merge_batch(&state).unwrap();
        back.retract_batch(&[nine]).unwrap();
        assert_eq!(back.evaluate().unwrap(), ScalarValue::Int64(Some(5)));
        back.retract_batch(&[Arc::new(Int64Array::from(vec![5]))])
            .unwrap();
        assert_eq!(back.evaluate().unwrap(), ScalarValue::Int64(None));
    }

    #[test]
    fn count_distinct_counts_the_values_still_held() {
        let mut n = Multiset {
            reduce: Reduce::CountDistinct,
            data_type: DataType::Int64,
            values: BTreeMap::new(),
        };
        let a: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(1), None, Some(2)]));
        n.update_batch(&[a]).unwrap();
        assert_eq!(n.evaluate().unwrap(), ScalarValue::Int64(Some(2)));
        n.retract_batch(&[Arc::new(Int64Array::from(vec![1, 2]))])
            .unwrap();
        assert_eq!(
            n.evaluate().unwrap(),
            ScalarValue::Int64(Some(1)),
            "one 1 is left"
        );
    }
}
