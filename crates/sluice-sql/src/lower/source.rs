//! Lowering a table scan: a source with its watermark, or a view lowered in place.

use std::sync::Arc;
use std::time::Duration;

use datafusion_expr::Expr;
use sluice_plan::{ConnectorSpec, EventTime, NodeKind, SourceNode, WatermarkSpec};

use crate::catalog::{TableDef, TimeAttribute};
use crate::error::Result;

use super::*;

impl Lowerer<'_> {
    /// A table's source node, shared by every query of the job that reads it.
    pub(crate) fn table(&mut self, def: &Arc<TableDef>) -> Result<Lowered> {
        if let Some(l) = self.sources.get(&def.name) {
            return Ok(l.clone());
        }
        let actual = def.source_schema(self.registry)?;
        let (event_time, delay, mut rowtime) = match &def.time {
            TimeAttribute::EventTime { column, delay } => {
                match def.computed.iter().find(|(c, _, _)| c == column) {
                    Some((_, e, _)) => (EventTime::Expr(e.clone()), *delay, Some(column.clone())),
                    None => (
                        EventTime::Column(column.clone()),
                        *delay,
                        Some(column.clone()),
                    ),
                }
            }
            TimeAttribute::ProcTime { column } => (
                EventTime::ProcessingTime,
                Duration::ZERO,
                Some(column.clone()),
            ),
            TimeAttribute::ConnectorDefault => {
                let default = def.default_event_time(self.registry)?;
                (EventTime::ConnectorDefault, Duration::ZERO, default)
            }
        };
        let mut spec: ConnectorSpec = def.spec.clone();
        if !def.declared.fields().is_empty() {
            spec.schema = Some(Arc::clone(&def.declared));
        }
        let node = self.plan.add_node(
            def.name.clone(),
            self.parallelism,
            NodeKind::Source(SourceNode {
                spec,
                event_time,
                watermark: WatermarkSpec {
                    max_out_of_orderness: delay,
                    idle_timeout: self.idle_timeout,
                },
            }),
        );
        // A changelog source (`debezium-json`) ends its columns with each row's kind: the
        // rows are updates and deletes, carried along like the event time.
        let updating = actual
            .fields()
            .last()
            .is_some_and(|f| f.name() == sluice_types::ROW_KIND_FIELD);
        let columns: Vec<String> = actual
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| n != sluice_types::ROW_KIND_FIELD)
            .collect();
        let mut lowered = Lowered {
            node,
            columns: columns.clone(),
            rowtime: rowtime.clone(),
            window: None,
            updating,
            window_end: None,
            window_start: None,
        };
        let mut want: Vec<String> = if def.declared.fields().is_empty() {
            columns
        } else {
            def.declared
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        };
        let mut exprs: Vec<Expr> = want.iter().map(|c| ucol(c.as_str())).collect();
        let ms =
            arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None);
        for (name, e, ty) in &def.computed {
            // The event-time column is `_timestamp` already, when its type is the same.
            let is_rowtime =
                matches!(&def.time, TimeAttribute::EventTime { column, .. } if column == name);
            exprs.push(if is_rowtime && *ty == ms {
                ucol(sluice_types::TIMESTAMP_FIELD)
            } else {
                e.clone()
            });
            want.push(name.clone());
        }
        if let TimeAttribute::ProcTime { column } = &def.time {
            exprs.push(ucol(sluice_types::TIMESTAMP_FIELD));
            want.push(column.clone());
            rowtime = Some(column.clone());
        }
        lowered = self.project(&lowered, exprs, want);
        lowered.rowtime = rowtime.filter(|r| lowered.columns.contains(r));
        // An upsert-kafka table's records are upserts by its primary key: each key's last
        // row makes them a changelog (`-U`/`+U` for a replaced row, `-D` for a tombstone).
        if def.spec.connector == "upsert-kafka" {
            let keys = def.primary_key.clone();
            let node = self.add(
                &lowered,
                NodeKind::ChangelogNormalize { keys: keys.clone() },
                self.parallelism,
                Some(sluice_plan::Partitioning::Hash(keys)),
            );
            lowered.node = node;
            lowered.updating = true;
        }
        self.sources.insert(def.name.clone(), lowered.clone());
        Ok(lowered)
    }
}
