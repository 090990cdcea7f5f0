//! Lowering `OVER` aggregates.

use std::sync::Arc;

use datafusion_common::ScalarValue;
use datafusion_expr::expr::{AggregateFunction, WindowFunction};
use datafusion_expr::{Expr, WindowFunctionDefinition};
use sluice_plan::{NodeKind, OverFrame, OverOrder, Partitioning};

use crate::error::{Result, SqlError};

use super::*;

impl Lowerer<'_> {
    /// OVER aggregates: `agg(x) OVER (PARTITION BY k ORDER BY ts [ROWS|RANGE BETWEEN …
    /// PRECEDING AND CURRENT ROW])`, every row kept, with the aggregates over its frame.
    pub(crate) fn over(&mut self, w: &datafusion_expr::logical_plan::Window) -> Result<Lowered> {
        use datafusion_expr::{WindowFrameBound, WindowFrameUnits};
        let input = self.lower(&w.input)?;
        let input = self.materialize(input)?;
        // Over an updating input, rows are ordered by any columns and every change is
        // applied where it falls; over an append-only one, by event time as rows come.
        let rowtime = match (&input.rowtime, input.updating) {
            (_, true) => None,
            (Some(r), false) => Some(r.clone()),
            (None, false) => {
                return Err(SqlError::new(
                    "an OVER aggregate orders rows by event time: its input needs a time column (WATERMARK FOR …)",
                ));
            }
        };
        let mut order_by: Option<Vec<OverOrder>> = None;
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
            match &rowtime {
                Some(rowtime) => {
                    let by_time = match params.order_by.as_slice() {
                        [order] => {
                            order.asc
                                && as_column(&resolve(&order.expr, &input.columns))
                                    == Some(rowtime.as_str())
                        }
                        _ => false,
                    };
                    if !by_time {
                        return Err(SqlError::new(format!(
                            "an OVER aggregate orders by the event-time column `{rowtime}`, ascending: ORDER BY {rowtime}"
                        )));
                    }
                }
                None => {
                    let this: Vec<OverOrder> = params
                        .order_by
                        .iter()
                        .map(|o| {
                            as_column(&resolve(&o.expr, &input.columns)).map(|c| OverOrder {
                                column: c.to_string(),
                                descending: !o.asc,
                                nulls_first: o.nulls_first,
                            })
                        })
                        .collect::<Option<_>>()
                        .ok_or_else(|| {
                            SqlError::new(
                                "an OVER aggregate over an updating input orders by columns",
                            )
                        })?;
                    if this.is_empty() {
                        return Err(SqlError::new(
                            "an OVER aggregate needs an ORDER BY (its frame ends at the current row)",
                        ));
                    }
                    if order_by.as_ref().is_some_and(|o| *o != this) {
                        return Err(SqlError::unsupported(
                            "OVER aggregates with different PARTITION BY, ORDER BY or frames in one SELECT (split them into subqueries)",
                        ));
                    }
                    order_by = Some(this);
                }
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
        let kind = match order_by {
            Some(order_by) => {
                if let OverFrame::Range { .. } = frame
                    && (order_by.len() != 1 || order_by[0].descending)
                {
                    return Err(SqlError::new(
                        "a RANGE frame with an interval orders by one timestamp column, ascending",
                    ));
                }
                NodeKind::ChangelogOverAggregate {
                    partition_by: partition,
                    order_by,
                    aggregates,
                    frame,
                }
            }
            None => NodeKind::OverAggregate {
                partition_by: partition,
                aggregates,
                frame,
                ttl_ms: self.state_ttl.map(|d| d.as_millis() as i64),
            },
        };
        let node = self.add(&input, kind, p, edge);
        let mut columns = input.columns.clone();
        columns.extend(names);
        Ok(Lowered {
            node,
            columns,
            rowtime: input.rowtime.clone(),
            window: None,
            updating: input.updating,
            window_end: None,
            window_start: None,
        })
    }
}
