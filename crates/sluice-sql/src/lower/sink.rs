//! Lowering the end of a query: the sink, and the late-row side output.

use std::sync::Arc;

use datafusion_common::DFSchema;
use datafusion_expr::Expr;
use sluice_plan::{NodeId, NodeKind, Partitioning};

use crate::catalog::{Entry, TableDef};
use crate::error::{Result, SqlError};

use super::*;

impl Lowerer<'_> {
    /// Routes a window aggregate's late rows to a table, by column name.
    pub(crate) fn late_sink(&mut self, node: NodeId, input: &Lowered, table: &str) -> Result<()> {
        let def = match self.catalog.get(table) {
            Some(Entry::Table(t)) => Arc::clone(t),
            _ => {
                return Err(SqlError::new(format!(
                    "late_sink `{table}` is not a table; declare it with CREATE TABLE"
                )));
            }
        };
        let mut late_columns = input.columns.clone();
        late_columns.extend(["late_reason".to_string(), "missed_watermark".to_string()]);
        let side = Lowered {
            node,
            columns: late_columns.clone(),
            rowtime: None,
            window: None,
            updating: false,
            window_end: None,
            window_start: None,
        };
        // The project reads the side output: add it by hand.
        let (exprs, names): (Vec<Expr>, Vec<String>) = if def.declared.fields().is_empty() {
            late_columns
                .iter()
                .map(|c| (ucol(c.as_str()), c.clone()))
                .unzip()
        } else {
            let mut pairs = Vec::new();
            for f in def.declared.fields() {
                if !late_columns.contains(f.name()) {
                    return Err(SqlError::new(format!(
                        "late_sink `{table}` has column `{}`, which late rows do not have; they have: {}",
                        f.name(),
                        late_columns.join(", ")
                    )));
                }
                pairs.push((
                    Expr::Cast(datafusion_expr::Cast::new(
                        Box::new(ucol(f.name().as_str())),
                        f.data_type().clone(),
                    )),
                    f.name().clone(),
                ));
            }
            pairs.into_iter().unzip()
        };
        let p = self.plan.nodes[node].parallelism;
        let exprs = exprs
            .into_iter()
            .zip(&names)
            .map(|(e, n)| e.alias(n))
            .collect();
        let proj = self
            .plan
            .add_node("project late rows", p, NodeKind::Project { exprs });
        self.plan
            .add_side_edge(side.node, "late", proj, Partitioning::Forward);
        let sink = self
            .plan
            .add_node(format!("sink {table}"), p, NodeKind::Sink(def.spec.clone()));
        self.plan.add_edge(proj, sink, Partitioning::Forward);
        Ok(())
    }

    /// Ends a query in a table: columns matched by position to the table's declared
    /// columns (cast where types differ), or passed through when it declares none.
    pub fn sink(&mut self, query: Lowered, schema: &DFSchema, def: &TableDef) -> Result<()> {
        let query = self.materialize(query)?;
        let out_names = physical_names(schema);
        // What the sink writes: the declared columns but the VIRTUAL metadata ones.
        let written: arrow::datatypes::SchemaRef = match def.virtual_columns.is_empty() {
            true => Arc::clone(&def.declared),
            false => Arc::new(arrow::datatypes::Schema::new(
                def.declared
                    .fields()
                    .iter()
                    .filter(|f| !def.virtual_columns.contains(f.name()))
                    .cloned()
                    .collect::<Vec<_>>(),
            )),
        };
        let lowered = if written.fields().is_empty() {
            let exprs = out_names.iter().map(|n| ucol(n.as_str())).collect();
            self.project(&query, exprs, out_names)
        } else {
            let declared = written.fields();
            if declared.len() != out_names.len() {
                return Err(SqlError::new(format!(
                    "the query returns {} columns ({}) but table `{}` has {} ({})",
                    out_names.len(),
                    out_names.join(", "),
                    def.name,
                    declared.len(),
                    declared
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let mut exprs = Vec::new();
            let mut names = Vec::new();
            for ((name, (_, qf)), f) in out_names.iter().zip(schema.iter()).zip(declared.iter()) {
                let c = ucol(name.as_str());
                exprs.push(if qf.data_type() == f.data_type() {
                    c
                } else {
                    Expr::Cast(datafusion_expr::Cast::new(
                        Box::new(c),
                        f.data_type().clone(),
                    ))
                });
                names.push(f.name().clone());
            }
            self.project(&query, exprs, names)
        };
        let mut spec = def.spec.clone();
        if !written.fields().is_empty() {
            spec.schema = Some(Arc::clone(&written));
        }
        spec.metadata
            .retain(|c, _| !def.virtual_columns.contains(c));
        // The primary key of an upsert sink is its record key; its changes go through a
        // hash exchange on it, so each key's changes reach the sink in order.
        let mut by_key = None;
        if spec.connector == "upsert-kafka" {
            if def.primary_key.is_empty() {
                return Err(SqlError::new(format!(
                    "table `{}` uses 'connector' = 'upsert-kafka', which needs a PRIMARY KEY (…) NOT ENFORCED: its columns are the record key",
                    def.name
                )));
            }
            spec.options
                .insert("key.fields".into(), def.primary_key.join(";"));
            by_key = Some(Partitioning::Hash(def.primary_key.clone()));
        }
        if lowered.updating
            && let Ok(sink) = self.registry.sink(&spec.connector)
            && !sink.accepts_updates(&spec)
        {
            return Err(SqlError::new(
                sluice_runtime::append_only_sink_error(&format!("table `{}`", def.name), &spec)
                    .message,
            ));
        }
        // An updating input not keyed by the sink's key (a join, a Top-N, an aggregate by
        // other columns) goes through an upsert materializer first, as Flink's
        // SinkUpsertMaterializer: the key's value is its latest row still there.
        use crate::settings::UpsertMaterialize;
        let materialize = by_key.is_some()
            && lowered.updating
            && match self.upsert_materialize {
                UpsertMaterialize::Auto => !crate::changelog_mode::keyed_by(
                    self.plan,
                    lowered.node,
                    def.primary_key.clone(),
                ),
                UpsertMaterialize::Force => true,
                UpsertMaterialize::None => false,
            };
        let p = self.plan.nodes[lowered.node].parallelism;
        let node = match self.sinks.get(&def.name) {
            Some(&n) => n,
            None => {
                let n = self
                    .plan
                    .add_node(format!("sink {}", def.name), p, NodeKind::Sink(spec));
                let entry = match materialize {
                    true => {
                        let m = self.plan.add_node(
                            format!("upsert-materialize {}", def.name),
                            p,
                            NodeKind::UpsertMaterialize {
                                keys: def.primary_key.clone(),
                            },
                        );
                        self.plan.add_edge(m, n, Partitioning::Forward);
                        m
                    }
                    false => n,
                };
                self.sinks.insert(def.name.clone(), entry);
                entry
            }
        };
        let edge = match by_key {
            Some(hash) => hash,
            None if self.plan.nodes[node].parallelism == p => Partitioning::Forward,
            None => Partitioning::Rebalance,
        };
        self.plan.add_edge(lowered.node, node, edge);
        Ok(())
    }
}
