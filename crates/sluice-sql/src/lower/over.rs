//! Lowering `OVER` aggregates.

use std::sync::Arc;

use datafusion_common::ScalarValue;
use datafusion_expr::expr::{AggregateFunction, WindowFunction};
use datafusion_expr::{Expr, WindowFunctionDefinition};
use sluice_plan::{NodeKind, OverFrame, Partitioning};

use crate::error::{Result, SqlError};

use super::*;

impl Lowerer<'_> {
    /// OVER aggregates: `agg(x) OVER (PARTITION BY k ORDER BY ts [ROWS|RANGE BETWEEN …
    /// PRECEDING AND CURRENT ROW])`, every row kept, with the aggregates over its frame.
    pub(crate) fn over(&mut self, w: &datafusion_expr::logical_plan::Window) -> Result<Lowered> {
        use datafusion_expr::{WindowFrameBound, WindowFrameUnits};
        let input = self.lower(&w.input)?;
        let input = self.materialize(input)?;
        if input.updating {
            return Err(SqlError::unsupported(
                "an OVER aggregate over an updating input (a GROUP BY without windows)",
            ));
        }
        let Some(rowtime) = input.rowtime.clone() else {
            return Err(SqlError::new(
                "an OVER aggregate orders rows by event time: its input needs a time column (WATERMARK FOR …)",
            ));
        };
        let n_in = w.input.schema().fields().len();
        let mut partition: Option<Vec<String>> = None;
        let mut frame: Option<OverFrame> = None;
        let mut aggregates = Vec::new();
        let mut names = Vec::new();
        for (i, e) in w.window_expr.iter().enumerate() {
            let name = w.schema.field(n_in + i).name().clone();
            let Expr::WindowFunction(wf) = e.clone().unalias() else {
                return Err(SqlError::unsupported(format!(
                    "`{e}` as an OVER expression"
                )));
            };
            let WindowFunction { fun, params } = wf.as_ref();
            let WindowFunctionDefinition::AggregateUDF(udf) = fun else {
                return Err(SqlError::unsupported(format!(
                    "{}() OVER (…) outside a Top-N (`WHERE rn <= n` over ROW_NUMBER() or RANK())",
                    fun.name().to_uppercase()
                )));
            };
            if params.distinct || params.filter.is_some() {
                return Err(SqlError::unsupported(
                    "DISTINCT or FILTER in an OVER aggregate",
                ));
            }
            let part: Vec<String> = params
                .partition_by
                .iter()
                .map(|e| as_column(&resolve(e, &input.columns)).map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| SqlError::new("an OVER aggregate partitions by columns"))?;
            let [order] = params.order_by.as_slice() else {
                return Err(SqlError::new(format!(
                    "an OVER aggregate orders by the event-time column `{rowtime}`, ascending: ORDER BY {rowtime}"
                )));
            };
            let by_time =
                as_column(&resolve(&order.expr, &input.columns)) == Some(rowtime.as_str());
            if !by_time || !order.asc {
                return Err(SqlError::new(format!(
                    "an OVER aggregate orders by the event-time column `{rowtime}`, ascending: ORDER BY {rowtime}"
                )));
            }
            let f = &params.window_frame;
            if !matches!(f.end_bound, WindowFrameBound::CurrentRow) {
                return Err(SqlError::unsupported(
                    "an OVER frame that does not end at the CURRENT ROW",
                ));
            }
            let this = match (&f.units, &f.start_bound) {
                (WindowFrameUnits::Rows, WindowFrameBound::Preceding(v)) if v.is_null() => {
                    OverFrame::UnboundedRows
                }
                (WindowFrameUnits::Range, WindowFrameBound::Preceding(v)) if v.is_null() => {
                    OverFrame::UnboundedRange
                }
                (WindowFrameUnits::Rows, WindowFrameBound::Preceding(v)) => {
                    let n = v
                        .cast_to(&arrow::datatypes::DataType::UInt64)
                        .ok()
                        .and_then(|v| match v {
                            ScalarValue::UInt64(Some(n)) => Some(n),
                            _ => None,
                        })
                        .ok_or_else(|| {
                            SqlError::new(format!("ROWS {v} PRECEDING: not a row count"))
                        })?;
                    OverFrame::Rows { preceding: n }
                }
                (WindowFrameUnits::Rows, WindowFrameBound::CurrentRow) => {
                    OverFrame::Rows { preceding: 0 }
                }
                (WindowFrameUnits::Range, WindowFrameBound::Preceding(v)) => {
                    // The planner keeps a frame's interval as text until coercion.
                    let v = v
                        .cast_to(&arrow::datatypes::DataType::Interval(
                            arrow::datatypes::IntervalUnit::MonthDayNano,
                        ))
                        .unwrap_or_else(|_| v.clone());
                    let ms = crate::window_tvf::literal_interval_ms(&Expr::Literal(v.clone(), None))
                        .ok_or_else(|| {
                            SqlError::new(format!(
                                "RANGE {v} PRECEDING: use an interval, as in RANGE BETWEEN INTERVAL '10' SECOND PRECEDING AND CURRENT ROW"
                            ))
                        })?;
                    OverFrame::Range {
                        preceding_ms: ms as i64,
                    }
                }
                (WindowFrameUnits::Range, WindowFrameBound::CurrentRow) => {
                    OverFrame::Range { preceding_ms: 0 }
                }
                _ => {
                    return Err(SqlError::unsupported(format!("the OVER frame `{f}`")));
                }
            };
            match (&partition, &frame) {
                (None, None) => {
                    partition = Some(part);
                    frame = Some(this);
                }
                (Some(p), Some(fr)) if *p == part && *fr == this => {}
                _ => {
                    return Err(SqlError::unsupported(
                        "OVER aggregates with different PARTITION BY, ORDER BY or frames in one SELECT (split them into subqueries)",
                    ));
                }
            }
            let args: Vec<Expr> = params
                .args
                .iter()
                .map(|a| resolve(a, &input.columns))
                .collect();
            self.check_columns(&input, &args.iter().collect::<Vec<_>>())?;
            aggregates.push(
                Expr::AggregateFunction(AggregateFunction::new_udf(
                    Arc::clone(udf),
                    args,
                    false,
                    None,
                    vec![],
                    None,
                ))
                .alias(name.clone()),
            );
            names.push(name);
        }
        let partition = partition.unwrap_or_default();
        let frame = frame.unwrap_or(OverFrame::UnboundedRange);
        let (p, edge) = if partition.is_empty() {
            (1, None)
        } else {
            (
                self.parallelism,
                Some(Partitioning::Hash(partition.clone())),
            )
        };
        let node = self.add(
            &input,
            NodeKind::OverAggregate {
                partition_by: partition,
                aggregates,
                frame,
                ttl_ms: self.state_ttl.map(|d| d.as_millis() as i64),
            },
            p,
            edge,
        );
        let mut columns = input.columns.clone();
        columns.extend(names);
        Ok(Lowered {
            node,
            columns,
            rowtime: input.rowtime.clone(),
            window: None,
            updating: false,
            window_end: None,
            window_start: None,
        })
    }
}
