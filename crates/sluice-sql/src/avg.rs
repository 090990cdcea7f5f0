//! `AVG` as Flink computes it: the average of an integer column is an integer of the same
//! type (the sum divided by the count, truncated toward zero, as Java's `long` division
//! does); of any other type it is DataFusion's.
//!
//! DataFusion casts integers to `DOUBLE` first, so `AVG` of `1, 2, 4` is `2.333…` there
//! and `2` in Flink; a Flink query that writes the average into a `BIGINT` column (Nexmark
//! q4 and q17) would otherwise differ without a word.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Int64Type, UInt64Type};
use datafusion_common::{Result, ScalarValue, utils::SingleRowListArrayBuilder};
use datafusion_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion_expr::utils::format_state_name;
use datafusion_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Coercion, GroupsAccumulator, Signature,
    TypeSignature, TypeSignatureClass, Volatility,
};
use datafusion_functions_aggregate::average::Avg;

/// Flink's `AVG` (see the module's documentation).
pub fn avg() -> AggregateUDF {
    AggregateUDF::from(FlinkAvg::default())
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct FlinkAvg {
    signature: Signature,
    other: Avg,
}

impl Default for FlinkAvg {
    fn default() -> Self {
        let exact = |class| TypeSignature::Coercible(vec![Coercion::new_exact(class)]);
        let float = TypeSignature::Coercible(vec![Coercion::new_implicit(
            TypeSignatureClass::Native(datafusion_common::types::logical_float64()),
            vec![TypeSignatureClass::Float],
            datafusion_common::types::NativeType::Float64,
        )]);
        Self {
            // Integers are kept as they are; the rest as DataFusion's AVG takes them.
            signature: Signature::one_of(
                vec![
                    exact(TypeSignatureClass::Integer),
                    exact(TypeSignatureClass::Decimal),
                    exact(TypeSignatureClass::Duration),
                    float,
                ],
                Volatility::Immutable,
            ),
            other: Avg::new(),
        }
    }
}

impl AggregateUDFImpl for FlinkAvg {
    fn name(&self) -> &str {
        "avg"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t) if t.is_integer() => Ok(t.clone()),
            _ => self.other.return_type(arg_types),
        }
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let input = args.expr_fields[0].data_type();
        if !input.is_integer() {
            return self.other.accumulator(args);
        }
        let output = input.clone();
        Ok(match args.is_distinct {
            true => Box::new(DistinctIntegerAvg {
                values: HashSet::new(),
                output,
            }),
            false => Box::new(IntegerAvg {
                sum: 0,
                count: 0,
                output,
            }),
        })
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        if !args.input_fields[0].data_type().is_integer() {
            return self.other.state_fields(args);
        }
        Ok(match args.is_distinct {
            true => vec![Arc::new(Field::new_list(
                format_state_name(args.name, "avg distinct"),
                Field::new_list_field(DataType::Int64, true),
                false,
            ))],
            false => vec![
                Arc::new(Field::new(
                    format_state_name(args.name, "count"),
                    DataType::UInt64,
                    true,
                )),
                Arc::new(Field::new(
                    format_state_name(args.name, "sum"),
                    DataType::Int64,
                    true,
                )),
            ],
        })
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        !args.expr_fields[0].data_type().is_integer()
            && self.other.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        self.other.create_groups_accumulator(args)
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        match args.expr_fields[0].data_type().is_integer() {
            true => self.accumulator(args),
            false => self.other.create_sliding_accumulator(args),
        }
    }
}

/// The values of an integer column as `i64` (every integer type but large `UInt64`
/// values fits; those wrap, as Java's `long` would).
fn as_i64(values: &ArrayRef) -> Result<ArrayRef> {
    Ok(cast(values, &DataType::Int64)?)
}

/// `sum / count` truncated toward zero in the column's own type; NULL over no values.
fn average(sum: i64, count: u64, output: &DataType) -> Result<ScalarValue> {
    match count {
        0 => ScalarValue::try_from(output),
        n => ScalarValue::Int64(Some(sum.wrapping_div(n as i64))).cast_to(output),
    }
}

/// The running sum (wrapping, as Flink's `long` sum does) and count of the values.
#[derive(Debug)]
struct IntegerAvg {
    sum: i64,
    count: u64,
    output: DataType,
}

impl IntegerAvg {
    fn add(&mut self, values: &ArrayRef, sign: i64) -> Result<()> {
        let values = as_i64(values)?;
        let values = values.as_primitive::<Int64Type>();
        let n = (values.len() - values.null_count()) as u64;
        // Arrow's vectorized sum wraps on overflow, as Java's `long` does.
        let sum = arrow::compute::sum(values).unwrap_or(0);
        self.sum = self.sum.wrapping_add(sum.wrapping_mul(sign));
        self.count = match sign {
            1 => self.count + n,
            _ => self.count.saturating_sub(n),
        };
        Ok(())
    }
}

impl Accumulator for IntegerAvg {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.add(&values[0], 1)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.add(&values[0], -1)
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        average(self.sum, self.count, &self.output)
    }

    fn size(&self) -> usize {
        size_of_val(self)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            ScalarValue::UInt64(Some(self.count)),
            ScalarValue::Int64(Some(self.sum)),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let counts = states[0].as_primitive::<UInt64Type>();
        let sums = states[1].as_primitive::<Int64Type>();
        self.count += counts.iter().flatten().sum::<u64>();
        self.sum = sums.iter().flatten().fold(self.sum, i64::wrapping_add);
        Ok(())
    }
}

/// `AVG(DISTINCT x)` of an integer column: the distinct values seen.
#[derive(Debug)]
struct DistinctIntegerAvg {
    values: HashSet<i64>,
    output: DataType,
}

impl DistinctIntegerAvg {
    fn insert_all(&mut self, values: &ArrayRef) -> Result<()> {
        let values = as_i64(values)?;
        self.values
            .extend(values.as_primitive::<Int64Type>().iter().flatten());
        Ok(())
    }
}

impl Accumulator for DistinctIntegerAvg {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.insert_all(&values[0])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let sum = self.values.iter().fold(0i64, |s, v| s.wrapping_add(*v));
        average(sum, self.values.len() as u64, &self.output)
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.values.capacity() * size_of::<i64>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let mut values: Vec<i64> = self.values.iter().copied().collect();
        values.sort_unstable();
        let array: ArrayRef = Arc::new(arrow::array::Int64Array::from(values));
        Ok(vec![
            SingleRowListArrayBuilder::new(array).build_list_scalar(),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for list in states[0].as_list::<i32>().iter().flatten() {
            self.insert_all(&list)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, Int64Array};

    fn int_avg(output: DataType) -> IntegerAvg {
        IntegerAvg {
            sum: 0,
            count: 0,
            output,
        }
    }

    #[test]
    fn integers_average_to_their_own_type_truncated_toward_zero() {
        let mut a = int_avg(DataType::Int64);
        let v: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(2), None, Some(4)]));
        a.update_batch(&[v]).unwrap();
        assert_eq!(a.evaluate().unwrap(), ScalarValue::Int64(Some(2)));
        let mut neg = int_avg(DataType::Int32);
        let v: ArrayRef = Arc::new(Int32Array::from(vec![-3, -4]));
        neg.update_batch(&[v]).unwrap();
        assert_eq!(neg.evaluate().unwrap(), ScalarValue::Int32(Some(-3)));
        // Taken back to nothing: NULL, not a division by zero.
        let v: ArrayRef = Arc::new(Int32Array::from(vec![-3, -4]));
        neg.retract_batch(&[v]).unwrap();
        assert_eq!(neg.evaluate().unwrap(), ScalarValue::Int32(None));
    }

    #[test]
    fn states_merge_and_distinct_values_count_once() {
        let mut a = int_avg(DataType::Int64);
        let v: ArrayRef = Arc::new(Int64Array::from(vec![10, 20]));
        a.update_batch(&[v]).unwrap();
        let state: Vec<ArrayRef> = a
            .state()
            .unwrap()
            .iter()
            .map(|s| s.to_array().unwrap())
            .collect();
        let mut b = int_avg(DataType::Int64);
        let v: ArrayRef = Arc::new(Int64Array::from(vec![3]));
        b.update_batch(&[v]).unwrap();
        b.merge_batch(&state).unwrap();
        assert_eq!(b.evaluate().unwrap(), ScalarValue::Int64(Some(11)));

        let mut d = DistinctIntegerAvg {
            values: HashSet::new(),
            output: DataType::Int64,
        };
        let v: ArrayRef = Arc::new(Int64Array::from(vec![1, 1, 1, 4]));
        d.update_batch(&[v]).unwrap();
        assert_eq!(d.evaluate().unwrap(), ScalarValue::Int64(Some(2)));
        let state: Vec<ArrayRef> = d
            .state()
            .unwrap()
            .iter()
            .map(|s| s.to_array().unwrap())
            .collect();
        let mut e = DistinctIntegerAvg {
            values: HashSet::new(),
            output: DataType::Int64,
        };
        e.merge_batch(&state).unwrap();
        assert_eq!(e.evaluate().unwrap(), ScalarValue::Int64(Some(2)));
    }
}
