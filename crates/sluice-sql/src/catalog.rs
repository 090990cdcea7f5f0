//! Tables and views declared by a script, and the DataFusion context provider that
//! resolves names, functions and window table functions against them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion_common::config::ConfigOptions;
use datafusion_common::{DataFusionError, TableReference};
use datafusion_expr::planner::{ContextProvider, ExprPlanner, RelationPlanner};
use datafusion_expr::{
    AggregateUDF, HigherOrderUDF, LogicalPlan, ScalarUDF, TableProviderFilterPushDown, TableSource,
    WindowUDF,
};
use sluice_plan::ConnectorSpec;
use sluice_runtime::ConnectorRegistry;
use sluice_types::TIMESTAMP_FIELD;

use crate::error::{Result, SqlError};
use crate::script::Pos;

/// Where a table's event time comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum TimeAttribute {
    /// `WATERMARK FOR column AS column - INTERVAL …`: event time with that bound.
    EventTime {
        /// The column.
        column: String,
        /// Bounded out-of-orderness.
        delay: Duration,
    },
    /// `column AS PROCTIME()`: processing time.
    ProcTime {
        /// The computed column holding the processing time.
        column: String,
    },
    /// Nothing declared: the connector's natural event-time column, if it has one.
    ConnectorDefault,
}

/// A source's columns and its natural event-time column.
type ResolvedSource = (SchemaRef, Option<String>);

/// A `CREATE TABLE`.
#[derive(Debug)]
pub struct TableDef {
    /// Table name (normalised).
    pub name: String,
    /// Declared physical columns; empty when the connector supplies them.
    pub declared: SchemaRef,
    /// Connector and options.
    pub spec: ConnectorSpec,
    /// Event time.
    pub time: TimeAttribute,
    /// `PRIMARY KEY (…) NOT ENFORCED` columns.
    pub primary_key: Vec<String>,
    /// Computed columns (`name AS expr`, not `PROCTIME()`): name, expression over the
    /// physical columns, type.
    pub computed: Vec<(String, datafusion_expr::Expr, DataType)>,
    /// Where the statement began.
    pub pos: Pos,
    /// `METADATA … VIRTUAL` columns: read, never written.
    pub virtual_columns: Vec<String>,
    /// The source's resolved columns (connector schema, checked against the declared
    /// one) and its natural event-time column, computed on first read.
    source: Mutex<Option<std::result::Result<ResolvedSource, String>>>,
}

impl TableDef {
    /// A table definition.
    pub fn new(
        name: String,
        declared: SchemaRef,
        spec: ConnectorSpec,
        time: TimeAttribute,
        primary_key: Vec<String>,
        computed: Vec<(String, datafusion_expr::Expr, DataType)>,
        pos: Pos,
    ) -> Self {
        Self {
            name,
            declared,
            spec,
            time,
            primary_key,
            computed,
            pos,
            virtual_columns: Vec::new(),
            source: Mutex::new(None),
        }
    }

    /// The columns a query reads from this table as a source: the declared columns
    /// (which the connector must produce) or, when none are declared, the connector's.
    pub fn source_schema(&self, registry: &ConnectorRegistry) -> Result<SchemaRef> {
        self.resolved(registry).map(|(s, _)| s)
    }

    /// The connector's natural event-time column (Nexmark: `date_time`), if it has one.
    pub fn default_event_time(&self, registry: &ConnectorRegistry) -> Result<Option<String>> {
        self.resolved(registry).map(|(_, t)| t)
    }

    /// Prepares the source connector once: its schema and natural event-time column.
    fn resolved(&self, registry: &ConnectorRegistry) -> Result<(SchemaRef, Option<String>)> {
        let mut cache = self.source.lock().unwrap_or_else(|p| p.into_inner());
        if cache.is_none() {
            *cache = Some(self.resolve(registry));
        }
        match cache.as_ref().expect("invariant: just filled") {
            Ok((s, t)) => Ok((Arc::clone(s), t.clone())),
            Err(m) => Err(SqlError::at(self.pos, m.clone())),
        }
    }

    fn resolve(
        &self,
        registry: &ConnectorRegistry,
    ) -> std::result::Result<(SchemaRef, Option<String>), String> {
        registry.source(&self.spec.connector).map_err(|_| {
            format!(
                "table `{}` uses connector `{}`, which cannot be read from; source connectors: {}",
                self.name,
                self.spec.connector,
                registry.source_names().join(", ")
            )
        })?;
        let mut spec = self.spec.clone();
        if !self.declared.fields().is_empty() {
            spec.schema = Some(Arc::clone(&self.declared));
        }
        let source = registry
            .prepare_source(&spec)
            .map_err(|e| format!("table `{}`: {}", self.name, e.message))?;
        let actual = source
            .schema()
            .map_err(|e| format!("table `{}`: {}", self.name, e.message))?;
        let event_time = source.default_event_time();
        if self.declared.fields().is_empty() {
            return Ok((actual, event_time));
        }
        for f in self.declared.fields() {
            match actual.field_with_name(f.name()) {
                Ok(a) if types_compatible(a.data_type(), f.data_type()) => {}
                Ok(a) => {
                    return Err(format!(
                        "table `{}` declares `{}` as {}, but connector `{}` produces {}",
                        self.name,
                        f.name(),
                        f.data_type(),
                        self.spec.connector,
                        a.data_type()
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "table `{}` declares column `{}`, which connector `{}` does not produce; it has: {}",
                        self.name,
                        f.name(),
                        self.spec.connector,
                        actual
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
        Ok((actual, event_time))
    }

    /// The columns a query sees: declared (or connector) columns plus computed ones.
    pub fn sql_schema(&self, registry: &ConnectorRegistry) -> Result<SchemaRef> {
        let physical = if self.declared.fields().is_empty() {
            self.source_schema(registry)?
        } else {
            Arc::clone(&self.declared)
        };
        let mut fields: Vec<Field> = physical
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        for (name, _, ty) in &self.computed {
            fields.push(Field::new(name, ty.clone(), true));
        }
        if let TimeAttribute::ProcTime { column } = &self.time {
            fields.push(Field::new(
                column,
                DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
                false,
            ));
        }
        Ok(Arc::new(Schema::new(fields)))
    }
}

/// Whether a declared type accepts what a connector produces.
fn types_compatible(actual: &DataType, declared: &DataType) -> bool {
    use DataType::*;
    actual == declared
        || matches!(
            (actual, declared),
            (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View)
                | (Timestamp(_, _), Timestamp(_, _))
        )
}

/// A name in the catalog.
#[derive(Debug)]
pub enum Entry {
    /// A connector-backed table.
    Table(Arc<TableDef>),
    /// A view: its logical plan.
    View(Arc<LogicalPlan>),
}

/// The table source DataFusion sees: a schema plus what it stands for.
#[derive(Debug)]
pub struct SluiceTable {
    /// What the name refers to.
    pub entry: EntryRef,
    schema: SchemaRef,
}

/// A cheap handle to a catalog entry.
#[derive(Clone, Debug)]
pub enum EntryRef {
    /// A table.
    Table(Arc<TableDef>),
    /// A view.
    View(Arc<LogicalPlan>),
}

impl TableSource for SluiceTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&datafusion_expr::Expr],
    ) -> datafusion_common::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![
            TableProviderFilterPushDown::Unsupported;
            filters.len()
        ])
    }
}

/// Functions known to the planner: DataFusion's library plus registered UDFs.
#[derive(Clone, Debug)]
pub struct Functions {
    pub(crate) scalars: HashMap<String, Arc<ScalarUDF>>,
    pub(crate) aggregates: HashMap<String, Arc<AggregateUDF>>,
    pub(crate) windows: HashMap<String, Arc<WindowUDF>>,
}

impl Default for Functions {
    fn default() -> Self {
        let mut scalars = HashMap::new();
        for f in datafusion_functions::all_default_functions() {
            for a in f.aliases() {
                scalars.insert(a.clone(), Arc::clone(&f));
            }
            scalars.insert(f.name().to_string(), f);
        }
        let mut aggregates = HashMap::new();
        for f in datafusion_functions_aggregate::all_default_aggregate_functions() {
            for a in f.aliases() {
                aggregates.insert(a.clone(), Arc::clone(&f));
            }
            aggregates.insert(f.name().to_string(), f);
        }
        // AVG of an integer is an integer, as in Flink.
        aggregates.insert("avg".to_string(), Arc::new(crate::avg::avg()));
        let mut windows = HashMap::new();
        for f in datafusion_functions_window::all_default_window_functions() {
            for a in f.aliases() {
                windows.insert(a.clone(), Arc::clone(&f));
            }
            windows.insert(f.name().to_string(), f);
        }
        Self {
            scalars,
            aggregates,
            windows,
        }
    }
}

/// The DataFusion context provider over a script's catalog.
pub struct Provider<'a> {
    pub(crate) catalog: &'a HashMap<String, Entry>,
    pub(crate) registry: &'a ConnectorRegistry,
    pub(crate) functions: &'a Functions,
    pub(crate) options: ConfigOptions,
    pub(crate) expr_planners: Vec<Arc<dyn ExprPlanner>>,
    pub(crate) relation_planners: Vec<Arc<dyn RelationPlanner>>,
}

impl<'a> Provider<'a> {
    /// A provider over a catalog.
    pub fn new(
        catalog: &'a HashMap<String, Entry>,
        registry: &'a ConnectorRegistry,
        functions: &'a Functions,
        lookups: Vec<(u64, u64)>,
    ) -> Self {
        Self {
            catalog,
            registry,
            functions,
            options: ConfigOptions::default(),
            expr_planners: vec![
                Arc::new(datafusion_functions::core::planner::CoreFunctionPlanner::default()),
                Arc::new(datafusion_functions::datetime::planner::DatetimeFunctionPlanner),
                Arc::new(datafusion_functions::unicode::planner::UnicodeFunctionPlanner),
                Arc::new(datafusion_functions_aggregate::planner::AggregateFunctionPlanner),
                Arc::new(datafusion_functions_window::planner::WindowFunctionPlanner),
            ],
            relation_planners: vec![
                Arc::new(crate::window_tvf::WindowTvfPlanner),
                Arc::new(crate::window_tvf::LookupPlanner { at: lookups }),
            ],
        }
    }
}

impl ContextProvider for Provider<'_> {
    fn get_table_source(
        &self,
        name: TableReference,
    ) -> datafusion_common::Result<Arc<dyn TableSource>> {
        let key = name.table().to_string();
        let Some(entry) = self.catalog.get(&key) else {
            let mut known: Vec<&str> = self.catalog.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(DataFusionError::Plan(format!(
                "table or view `{name}` does not exist; declare it with CREATE TABLE or CREATE VIEW{}",
                if known.is_empty() {
                    String::new()
                } else {
                    format!(" (known: {})", known.join(", "))
                }
            )));
        };
        let (entry, schema) = match entry {
            Entry::Table(t) => (
                EntryRef::Table(Arc::clone(t)),
                t.sql_schema(self.registry)
                    .map_err(|e| DataFusionError::Plan(e.message))?,
            ),
            Entry::View(p) => (
                EntryRef::View(Arc::clone(p)),
                Arc::new(p.schema().as_arrow().clone()),
            ),
        };
        if schema.field_with_name(TIMESTAMP_FIELD).is_ok() {
            return Err(DataFusionError::Plan(format!(
                "`{name}` has a column named `{TIMESTAMP_FIELD}`, which Sluice reserves"
            )));
        }
        Ok(Arc::new(SluiceTable { entry, schema }))
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        &self.expr_planners
    }

    fn get_relation_planners(&self) -> &[Arc<dyn RelationPlanner>] {
        &self.relation_planners
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.functions.scalars.get(name).cloned()
    }

    fn get_higher_order_meta(&self, _name: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }

    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.functions.aggregates.get(name).cloned()
    }

    fn get_window_meta(&self, name: &str) -> Option<Arc<WindowUDF>> {
        self.functions.windows.get(name).cloned()
    }

    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }

    fn options(&self) -> &ConfigOptions {
        &self.options
    }

    fn udf_names(&self) -> Vec<String> {
        self.functions.scalars.keys().cloned().collect()
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn udaf_names(&self) -> Vec<String> {
        self.functions.aggregates.keys().cloned().collect()
    }

    fn udwf_names(&self) -> Vec<String> {
        self.functions.windows.keys().cloned().collect()
    }
}
