//! Sluice streaming SQL: a dialect close to Flink SQL, planned with sqlparser and
//! DataFusion's SQL planner (names, types, coercion, the function library) and lowered
//! to the same [`JobPlan`] as the Rust API. No code is generated per query.
//!
//! ```text
//!  script ──split──> SET | CREATE TABLE | CREATE VIEW | INSERT INTO | SELECT | EXPLAIN
//!           CREATE TABLE ──> catalog (connector, columns, WATERMARK)
//!           query ──DataFusion SqlToRel──> LogicalPlan ──lower──> JobPlan nodes
//!           every INSERT (and SELECT) of a script ──> one job
//! ```
//!
//! ```
//! use sluice_sql::SqlContext;
//! let mut ctx = SqlContext::new(sluice_runtime::ConnectorRegistry::new());
//! let err = ctx.plan_script("SELECT nope FROM missing").unwrap_err();
//! assert!(err.to_string().contains("`missing` does not exist"), "{err}");
//! ```

mod avg;
pub mod catalog;
mod changelog_mode;
pub mod error;
pub mod functions;
#[cfg(test)]
mod fuzz;
mod group_window;
pub mod lower;
pub mod script;
pub mod settings;
pub mod types;
pub mod window_tvf;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Schema};
use datafusion_common::DFSchema;
use datafusion_expr::{AggregateUDF, LogicalPlan, ScalarUDF};
use datafusion_sql::planner::{ParserOptions, PlannerContext, SqlToRel};
use datafusion_sql::sqlparser::ast::{
    BinaryOperator, CreateTable, Expr as SqlExpr, ObjectName, Query, SetExpr, Spanned, Statement,
    TableObject,
};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::parser::Parser;
use sluice_plan::{ConnectorSpec, JobPlan};
use sluice_runtime::ConnectorRegistry;

pub use catalog::TimeAttribute;
use catalog::{Entry, Functions, Provider, TableDef};
pub use error::{Result, SqlError};
use lower::{Lowered, Lowerer};
use script::{Pos, RawStatement, Snippet, TableExtras};
pub use settings::Settings;

/// The SQL types a column may be declared with, for "did you mean".
const TYPE_NAMES: &[&str] = &[
    "BOOLEAN",
    "TINYINT",
    "SMALLINT",
    "INT",
    "INTEGER",
    "BIGINT",
    "FLOAT",
    "DOUBLE",
    "DECIMAL",
    "STRING",
    "VARCHAR",
    "CHAR",
    "BYTES",
    "BINARY",
    "VARBINARY",
    "DATE",
    "TIME",
    "TIMESTAMP",
    "TIMESTAMP_LTZ",
    "ARRAY",
    "MAP",
    "ROW",
];

/// Refuses a column type that is no SQL type at all (`BIGNT`), at the type's name.
fn check_column_types(columns: &[datafusion_sql::sqlparser::ast::ColumnDef]) -> Result<()> {
    use datafusion_sql::sqlparser::ast::DataType as SqlType;
    for c in columns {
        if let SqlType::Custom(name, _) = &c.data_type {
            let written = name.to_string();
            let hint = match error::closest(&written, TYPE_NAMES.iter().copied()) {
                Some(t) => format!("; did you mean {t}?"),
                None => format!("; types: {}", TYPE_NAMES.join(", ")),
            };
            return Err(SqlError::at(
                Pos::from(name.span().start),
                format!(
                    "unknown type `{written}` for column `{}`{hint}",
                    c.name.value
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses an INSERT whose query gives a column a kind of value its sink column cannot
/// take (a STRING into a BIGINT), as Flink does at planning, pointing at the column in
/// the SELECT list (`columns`, when it is a plain one) or else at the statement.
fn check_insert_types(
    def: &TableDef,
    query: &DFSchema,
    columns: &[(Pos, String)],
    pos: Pos,
) -> Result<()> {
    let written: Vec<_> = def
        .declared
        .fields()
        .iter()
        .filter(|f| !def.virtual_columns.contains(f.name()))
        .collect();
    // No declared columns: the sink takes what comes; another count: the lowering says so.
    if written.len() != query.fields().len() {
        return Ok(());
    }
    let names = lower::physical_names(query);
    for (i, (sink, (given, name))) in written
        .iter()
        .zip(query.fields().iter().zip(&names))
        .enumerate()
    {
        if types::insertable(given.data_type(), sink.data_type()) {
            continue;
        }
        let (at, name) = match columns.len() == written.len() {
            true => (columns[i].0, columns[i].1.as_str()),
            false => (pos, name.as_str()),
        };
        let want = types::sql_type(sink.data_type());
        return Err(SqlError::at(
            at,
            format!(
                "column types of the query and of table `{}` do not match: its column `{}` (position {}) is {want}, the query gives {} (`{name}`); cast it explicitly, as in CAST({name} AS {want})",
                def.name,
                sink.name(),
                i + 1,
                types::sql_type(given.data_type()),
            ),
        ));
    }
    Ok(())
}

/// Deepest nesting the parser accepts (it returns an error beyond, never overflows).
const RECURSION_LIMIT: usize = 64;

/// The stack of the planning thread: ample for the deepest expression a script may hold.
const PLANNING_STACK: usize = 64 * 1024 * 1024;

/// Per job: the source of each table read so far, and the sink of each table written.
type Memo = (
    HashMap<String, Lowered>,
    HashMap<String, sluice_plan::NodeId>,
);

/// What a script asks for.
#[derive(Debug, Default)]
pub struct SqlJob {
    /// The job made of every `INSERT INTO` (and top-level `SELECT`); `None` if the
    /// script only declares things.
    pub plan: Option<JobPlan>,
    /// One plan per `EXPLAIN` statement, in order, each with the statement's text.
    pub explains: Vec<(String, JobPlan)>,
}

/// A table's or view's columns, as `DESCRIBE` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description {
    /// Name, SQL type, whether it may be NULL.
    pub columns: Vec<(String, String, bool)>,
    /// `PRIMARY KEY (…) NOT ENFORCED` columns.
    pub primary_key: Vec<String>,
    /// The watermark (or processing time) declared, as SQL.
    pub watermark: Option<String>,
}

/// Plans SQL scripts against a catalog of tables and views.
pub struct SqlContext {
    registry: ConnectorRegistry,
    functions: Functions,
    catalog: HashMap<String, Entry>,
    settings: Settings,
    select_sink: ConnectorSpec,
    /// Lookup tables of the statement being planned (line, column of their names).
    lookups: Vec<(u64, u64)>,
}

impl SqlContext {
    /// A context whose tables may use the connectors of `registry`.
    pub fn new(registry: ConnectorRegistry) -> Self {
        let mut functions = Functions::default();
        for f in functions::flink_builtins() {
            functions.scalars.insert(f.name().to_string(), Arc::new(f));
        }
        Self {
            registry,
            functions,
            catalog: HashMap::new(),
            settings: Settings::default(),
            select_sink: ConnectorSpec::new("print"),
            lookups: Vec::new(),
        }
    }

    /// Registers a scalar function (Rust UDF), callable by its name.
    pub fn register_udf(&mut self, udf: ScalarUDF) {
        self.functions
            .scalars
            .insert(udf.name().to_ascii_lowercase(), Arc::new(udf));
    }

    /// Registers an aggregate function (Rust UDAF), callable by its name.
    pub fn register_udaf(&mut self, udaf: AggregateUDF) {
        self.functions
            .aggregates
            .insert(udaf.name().to_ascii_lowercase(), Arc::new(udaf));
    }

    /// Where the rows of a top-level `SELECT` go (default: the `print` sink).
    pub fn with_select_sink(mut self, spec: ConnectorSpec) -> Self {
        self.select_sink = spec;
        self
    }

    /// Settings made with `SET` so far.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The tables and views declared so far, sorted by name: (name, whether a view).
    pub fn table_names(&self) -> Vec<(String, bool)> {
        let mut names: Vec<(String, bool)> = self
            .catalog
            .iter()
            .map(|(n, e)| (n.clone(), matches!(e, Entry::View(_))))
            .collect();
        names.sort();
        names
    }

    /// What `DESCRIBE name` shows: the columns a query of it sees (name, SQL type,
    /// nullable), with its primary key and watermark.
    pub fn describe(&self, name: &str) -> Result<Description> {
        let key = name.trim().trim_matches('`').to_string();
        let Some(entry) = self.catalog.get(&key).or_else(|| {
            self.catalog
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&key))
                .map(|(_, e)| e)
        }) else {
            let hint = error::closest(&key, self.catalog.keys().map(String::as_str))
                .map(|t| format!("; did you mean `{t}`?"))
                .unwrap_or_default();
            return Err(SqlError::new(format!(
                "table or view `{key}` does not exist{hint}"
            )));
        };
        let (schema, primary_key, watermark) = match entry {
            Entry::View(plan) => (plan.schema().as_arrow().clone(), Vec::new(), None),
            Entry::Table(def) => {
                let q = format!("SELECT * FROM `{}`", def.name);
                let stmt = parse_one(&q, Pos::default())?;
                let Statement::Query(query) = stmt else {
                    return Err(SqlError::new("not a query"));
                };
                let plan = self.plan_query(*query, Pos::default())?;
                let watermark = match &def.time {
                    TimeAttribute::EventTime { column, delay } => Some(format!(
                        "`{column}` - INTERVAL '{}' SECOND",
                        delay.as_secs_f64()
                    )),
                    TimeAttribute::ProcTime { column } => Some(format!("`{column}` AS PROCTIME()")),
                    TimeAttribute::ConnectorDefault => None,
                };
                (
                    plan.schema().as_arrow().clone(),
                    def.primary_key.clone(),
                    watermark,
                )
            }
        };
        Ok(Description {
            columns: schema
                .fields()
                .iter()
                .map(|f| {
                    (
                        f.name().clone(),
                        types::sql_type(f.data_type()),
                        f.is_nullable(),
                    )
                })
                .collect(),
            primary_key,
            watermark,
        })
    }

    /// Applies a setting as `SET 'key' = 'value'` would.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        self.settings.apply(key, value)
    }

    /// Plans a script: declarations update the catalog; all `INSERT INTO` and `SELECT`
    /// statements become one job.
    ///
    /// Planning recurses as deep as the deepest expression, so it runs on a thread of its
    /// own whose stack fits the deepest expression a script may hold
    /// ([`script::MAX_OPERATORS`]), whatever thread calls it (a tokio worker has 2 MiB).
    /// A panic while planning becomes an error.
    pub fn plan_script(&mut self, sql: &str) -> Result<SqlJob> {
        std::thread::scope(|scope| {
            let planner = std::thread::Builder::new()
                .name("sluice-plan".into())
                .stack_size(PLANNING_STACK)
                .spawn_scoped(scope, || self.plan_script_here(sql))
                .map_err(|e| SqlError::new(format!("cannot start the planning thread: {e}")))?;
            planner.join().unwrap_or_else(|p| {
                Err(SqlError::new(format!(
                    "planning failed: {}",
                    sluice_types::panic_message(p.as_ref())
                )))
            })
        })
    }

    fn plan_script_here(&mut self, sql: &str) -> Result<SqlJob> {
        let statements = script::split(sql)?;
        let mut job = SqlJob::default();
        let mut plan = JobPlan::new(
            self.settings
                .job_name
                .clone()
                .unwrap_or_else(|| "sql".into()),
        );
        let mut sources = (HashMap::new(), HashMap::new());
        for s in statements {
            match s {
                RawStatement::Set { key, value, pos } => {
                    self.settings
                        .apply(&key, &value)
                        .map_err(|e| e.or_at(pos))?;
                }
                RawStatement::Function {
                    name,
                    class,
                    language,
                    jars,
                    pos,
                } => self.create_function(&name, &class, &language, jars, pos)?,
                RawStatement::Sql {
                    text,
                    pos,
                    extras,
                    lookups,
                } => {
                    self.lookups = lookups.iter().map(|p| (p.line, p.column)).collect();
                    let stmt = parse_one(&text, pos)?;
                    match stmt {
                        Statement::Explain { statement, .. } => {
                            let mut p = JobPlan::new("explain");
                            let mut memo = (HashMap::new(), HashMap::new());
                            self.run_statement(*statement.clone(), pos, None, &mut p, &mut memo)?;
                            self.finish(&mut p);
                            job.explains.push((statement.to_string(), p));
                        }
                        other => self.run_statement(
                            other,
                            pos,
                            extras.map(|e| *e),
                            &mut plan,
                            &mut sources,
                        )?,
                    }
                }
            }
        }
        if !plan.nodes.is_empty() {
            changelog_mode::upserts_where_possible(&mut plan);
            self.finish(&mut plan);
            job.plan = Some(plan);
        }
        Ok(job)
    }

    /// Flink's `CREATE FUNCTION name AS 'class'`: Sluice cannot load a JVM or Python
    /// class, so the statement names a function the program running the job registered
    /// ([`Self::register_udf`], [`Self::register_udaf`]) under that name, as Flink needs
    /// the class on its class path; a function nobody registered is refused with the reason.
    fn create_function(
        &mut self,
        name: &str,
        class: &str,
        language: &str,
        jars: bool,
        pos: Pos,
    ) -> Result<()> {
        if jars {
            return Err(SqlError::at(
                pos,
                format!(
                    "CREATE FUNCTION {name} … USING JAR: Sluice does not load jars; register a Rust function named `{name}` with the program that runs the job"
                ),
            ));
        }
        let key = name.to_ascii_lowercase();
        if self.functions.scalars.contains_key(&key) || self.functions.aggregates.contains_key(&key)
        {
            return Ok(());
        }
        Err(SqlError::at(
            pos,
            format!(
                "CREATE FUNCTION {name} AS '{class}' ({language}): Sluice cannot load {language} classes; its functions are Rust functions registered under their names (SqlContext::register_udf / register_udaf) by the program that runs the job, and none is registered as `{name}`"
            ),
        ))
    }

    fn finish(&self, plan: &mut JobPlan) {
        if let Some(name) = &self.settings.job_name {
            plan.name = name.clone();
        }
        self.settings.apply_to(&mut plan.config);
    }

    fn run_statement(
        &mut self,
        stmt: Statement,
        pos: Pos,
        extras: Option<TableExtras>,
        plan: &mut JobPlan,
        sources: &mut Memo,
    ) -> Result<()> {
        match stmt {
            Statement::CreateTable(ct) => self.create_table(ct, extras.unwrap_or_default(), pos),
            Statement::CreateView(v) => {
                let name = object_name(&v.name);
                if self.catalog.contains_key(&name) && !v.or_replace {
                    return Err(SqlError::at(pos, format!("`{name}` already exists")));
                }
                if !v.columns.is_empty() {
                    return Err(SqlError::at(
                        pos,
                        "CREATE VIEW with a column list is not supported; alias the columns in the query",
                    ));
                }
                let logical = self.plan_query(*v.query, pos)?;
                self.catalog.insert(name, Entry::View(Arc::new(logical)));
                Ok(())
            }
            Statement::Insert(ins) => {
                let TableObject::TableName(name) = &ins.table else {
                    return Err(SqlError::at(pos, "INSERT INTO takes a table name"));
                };
                let name = object_name(name);
                if !ins.columns.is_empty() {
                    return Err(SqlError::at(
                        pos,
                        "INSERT INTO t (columns) is not supported; select the columns in the table's order",
                    ));
                }
                let Some(query) = ins.source else {
                    return Err(SqlError::at(pos, "INSERT INTO needs a query (SELECT …)"));
                };
                let def = match self.catalog.get(&name) {
                    Some(Entry::Table(t)) => Arc::clone(t),
                    Some(Entry::View(_)) => {
                        return Err(SqlError::at(
                            pos,
                            format!("cannot INSERT INTO view `{name}`"),
                        ));
                    }
                    None => {
                        return Err(SqlError::at(
                            pos,
                            format!(
                                "table `{name}` does not exist; declare it with CREATE TABLE … WITH ('connector' = …)"
                            ),
                        ));
                    }
                };
                if self.registry.sink(&def.spec.connector).is_err() {
                    return Err(SqlError::at(
                        pos,
                        format!(
                            "table `{name}` uses connector `{}`, which cannot be written to; sink connectors: {}",
                            def.spec.connector,
                            self.registry.sink_names().join(", ")
                        ),
                    ));
                }
                self.insert(*query, &def, pos, plan, sources)
            }
            Statement::Query(q) => {
                let def = TableDef::new(
                    "select".into(),
                    Arc::new(Schema::empty()),
                    self.select_sink.clone(),
                    TimeAttribute::ConnectorDefault,
                    Vec::new(),
                    Vec::new(),
                    pos,
                );
                self.insert(*q, &def, pos, plan, sources)
            }
            Statement::Explain { .. } => Err(SqlError::at(pos, "EXPLAIN cannot be nested")),
            other => Err(SqlError::at(
                pos,
                format!(
                    "unsupported statement `{}`; Sluice runs SET, CREATE TABLE, CREATE VIEW, INSERT INTO, SELECT and EXPLAIN",
                    other
                        .to_string()
                        .split_whitespace()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            )),
        }
    }

    fn provider(&self) -> Provider<'_> {
        Provider::new(
            &self.catalog,
            &self.registry,
            &self.functions,
            self.lookups.clone(),
        )
    }

    fn plan_query(&self, q: Query, pos: Pos) -> Result<LogicalPlan> {
        let provider = self.provider();
        let planner = SqlToRel::new_with_options(&provider, parser_options());
        let mut q = q;
        name_fields_as_flink(&mut q);
        group_window::rewrite(&mut q)?;
        planner
            .sql_statement_to_plan(Statement::Query(Box::new(q)))
            .map_err(|e| SqlError::datafusion(e).or_at(pos))
    }

    fn insert(
        &self,
        query: Query,
        def: &TableDef,
        pos: Pos,
        plan: &mut JobPlan,
        sources: &mut Memo,
    ) -> Result<()> {
        // Where each column of a plain SELECT is written, to point at a wrong one.
        let columns: Vec<(Pos, String)> = match query.body.as_ref() {
            SetExpr::Select(s) => {
                s.projection
                    .iter()
                    .map(|item| {
                        use datafusion_sql::sqlparser::ast::SelectItem;
                        let text = match item {
                            SelectItem::UnnamedExpr(e)
                            | SelectItem::ExprWithAlias { expr: e, .. } => e.to_string(),
                            other => other.to_string(),
                        };
                        (Pos::from(item.span().start), text)
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        let logical = self.plan_query(query, pos)?;
        check_insert_types(def, logical.schema(), &columns, pos)?;
        let mut lowerer = Lowerer::new(
            plan,
            &self.registry,
            &self.catalog,
            self.settings.parallelism,
            self.settings.idle_timeout,
        );
        lowerer.state_ttl = self.settings.state_ttl;
        lowerer.upsert_materialize = self.settings.upsert_materialize;
        lowerer.sources = std::mem::take(&mut sources.0);
        lowerer.sinks = std::mem::take(&mut sources.1);
        let result = lowerer
            .lower(&logical)
            .and_then(|l| lowerer.sink(l, logical.schema(), def));
        sources.0 = std::mem::take(&mut lowerer.sources);
        sources.1 = std::mem::take(&mut lowerer.sinks);
        result.map_err(|e| e.or_at(pos))
    }

    /// Refuses an option the table's connector does not understand, at its key.
    fn check_options(
        &self,
        connector: &str,
        options: &std::collections::BTreeMap<String, String>,
        at: &std::collections::BTreeMap<String, Pos>,
        pos: Pos,
    ) -> Result<()> {
        let mut known: Vec<&'static str> = Vec::new();
        if let Ok(s) = self.registry.source(connector) {
            known.extend(s.options());
        }
        if let Ok(s) = self.registry.sink(connector) {
            known.extend(s.options());
        }
        known.sort_unstable();
        known.dedup();
        for key in options.keys() {
            let ok = known.iter().any(|k| match k.strip_suffix('*') {
                Some(prefix) => key.starts_with(prefix),
                None => k == key,
            });
            if ok {
                continue;
            }
            let hint = match error::closest(key, known.iter().copied()) {
                Some(k) => format!("did you mean '{k}'?"),
                None => format!("it understands {}", known.join(", ")),
            };
            return Err(SqlError::at(
                at.get(key).copied().unwrap_or(pos),
                format!("connector `{connector}` has no option '{key}'; {hint}"),
            ));
        }
        Ok(())
    }

    fn create_table(&mut self, ct: CreateTable, extras: TableExtras, pos: Pos) -> Result<()> {
        let name = object_name(&ct.name);
        if self.catalog.contains_key(&name) {
            if ct.if_not_exists {
                return Ok(());
            }
            if !ct.or_replace {
                return Err(SqlError::at(pos, format!("`{name}` already exists")));
            }
        }
        if ct.query.is_some() {
            return Err(SqlError::at(
                pos,
                "CREATE TABLE … AS SELECT is not supported; CREATE TABLE, then INSERT INTO",
            ));
        }
        if !ct.constraints.is_empty() {
            return Err(SqlError::at(
                pos,
                "table constraints other than PRIMARY KEY (…) NOT ENFORCED are not supported",
            ));
        }
        check_column_types(&ct.columns)?;
        let provider = self.provider();
        let planner = SqlToRel::new_with_options(&provider, parser_options());
        let declared = planner
            .build_schema(ct.columns)
            .map_err(|e| SqlError::datafusion(e).or_at(pos))?;
        let declared = Arc::new(with_maps(declared, &extras.maps, pos)?);
        let mut options = extras.options;
        let Some(connector) = options.remove("connector") else {
            return Err(SqlError::at(
                pos,
                format!(
                    "table `{name}` needs WITH ('connector' = '…'); connectors: {}",
                    {
                        let mut n = self.registry.source_names();
                        n.extend(self.registry.sink_names());
                        n.sort_unstable();
                        n.dedup();
                        n.join(", ")
                    }
                ),
            ));
        };
        if self.registry.source(&connector).is_err() && self.registry.sink(&connector).is_err() {
            let mut n = self.registry.source_names();
            n.extend(self.registry.sink_names());
            n.sort_unstable();
            n.dedup();
            return Err(SqlError::at(
                pos,
                format!(
                    "unknown connector `{connector}`; available: {}",
                    n.join(", ")
                ),
            ));
        }
        self.check_options(&connector, &options, &extras.option_pos, pos)?;
        let mut spec = ConnectorSpec::new(connector);
        spec.options = options;
        if !extras.partition_by.is_empty() {
            if spec.connector != "filesystem" {
                return Err(SqlError::at(
                    pos,
                    format!(
                        "PARTITIONED BY is for 'connector' = 'filesystem' tables, not '{}'",
                        spec.connector
                    ),
                ));
            }
            if let Some(c) = extras
                .partition_by
                .iter()
                .find(|c| declared.field_with_name(c).is_err())
            {
                return Err(SqlError::at(
                    pos,
                    format!(
                        "PARTITIONED BY names `{c}`, which is not a declared column of `{name}`"
                    ),
                ));
            }
            spec.options
                .insert("partitioned-by".into(), extras.partition_by.join(";"));
        }
        let mut virtual_columns = Vec::new();
        for (col, key, virtual_col) in &extras.metadata {
            if declared.field_with_name(col).is_err() {
                return Err(SqlError::at(
                    pos,
                    format!("metadata column `{col}` is not a column of `{name}`"),
                ));
            }
            spec.metadata.insert(col.clone(), key.clone());
            if *virtual_col {
                virtual_columns.push(col.clone());
            }
        }
        // Computed columns: `p AS PROCTIME()` (processing time) or any expression over
        // the physical columns.
        let mut time = TimeAttribute::ConnectorDefault;
        let mut computed: Vec<(String, datafusion_expr::Expr, DataType)> = Vec::new();
        let physical = DFSchema::try_from_qualified_schema(name.as_str(), &declared)
            .map_err(|e| SqlError::datafusion(e).or_at(pos))?;
        let unqualified = DFSchema::try_from(declared.as_ref().clone())
            .map_err(|e| SqlError::datafusion(e).or_at(pos))?;
        for (col, snippet) in &extras.computed {
            let e = parse_expr(snippet)?;
            if let SqlExpr::Function(f) = &e
                && f.name.to_string().eq_ignore_ascii_case("proctime")
            {
                if !matches!(time, TimeAttribute::ConnectorDefault) {
                    return Err(SqlError::at(
                        snippet.pos,
                        "a table has one PROCTIME() column",
                    ));
                }
                time = TimeAttribute::ProcTime {
                    column: col.clone(),
                };
                continue;
            }
            if declared.field_with_name(col).is_ok() || computed.iter().any(|(c, _, _)| c == col) {
                return Err(SqlError::at(
                    snippet.pos,
                    format!("column `{col}` is declared twice"),
                ));
            }
            let expr = planner
                .sql_to_expr(e, &physical, &mut PlannerContext::new())
                .map_err(|e| SqlError::datafusion(e).or_at(snippet.pos))?;
            let expr = lower::unqualify(&expr);
            let ty = datafusion_expr::ExprSchemable::get_type(&expr, &unqualified)
                .map_err(|e| SqlError::datafusion(e).or_at(snippet.pos))?;
            computed.push((col.clone(), expr, ty));
        }
        if let Some((column, snippet)) = &extras.watermark {
            if !matches!(time, TimeAttribute::ConnectorDefault) {
                return Err(SqlError::at(
                    snippet.pos,
                    "a table with PROCTIME() cannot also have a WATERMARK",
                ));
            }
            let ty = match declared.field_with_name(column) {
                Ok(f) => f.data_type().clone(),
                Err(_) => computed
                    .iter()
                    .find(|(c, _, _)| c == column)
                    .map(|(_, _, t)| t.clone())
                    .ok_or_else(|| {
                        SqlError::at(
                            snippet.pos,
                            format!(
                                "WATERMARK FOR `{column}`: `{column}` is not a declared column of `{name}`"
                            ),
                        )
                    })?,
            };
            if !matches!(
                ty,
                DataType::Timestamp(_, _) | DataType::Int64 | DataType::Date64
            ) {
                return Err(SqlError::at(
                    snippet.pos,
                    format!(
                        "WATERMARK FOR `{column}`: the column is {ty}, it must be a TIMESTAMP(3) or BIGINT epoch milliseconds"
                    ),
                ));
            }
            let delay = watermark_delay(column, snippet, &planner)?;
            time = TimeAttribute::EventTime {
                column: column.clone(),
                delay,
            };
        }
        if let Some(k) = extras
            .primary_key
            .iter()
            .find(|k| declared.field_with_name(k).is_err())
        {
            return Err(SqlError::at(
                pos,
                format!("PRIMARY KEY column `{k}` is not a declared column of `{name}`"),
            ));
        }
        // An upsert-kafka table's record key is its primary key, read and written.
        if spec.connector == "upsert-kafka" && !extras.primary_key.is_empty() {
            spec.options
                .insert("key.fields".into(), extras.primary_key.join(";"));
        }
        let mut def = TableDef::new(
            name.clone(),
            declared,
            spec,
            time,
            extras.primary_key,
            computed,
            pos,
        );
        def.virtual_columns = virtual_columns;
        self.catalog.insert(name, Entry::Table(Arc::new(def)));
        Ok(())
    }
}

/// Names a selected nested field by the field, as Flink does: `SELECT bid.auction FROM
/// events` gives a column `auction` (DataFusion would name it `events.bid[auction]`), so
/// views and subqueries over nested rows have plain column names. A `t.col` whose `t` is a
/// table or alias of the `FROM` is a plain column and left alone, as is a field whose
/// name another item of the same `SELECT` has.
fn name_fields_as_flink(q: &mut Query) {
    use datafusion_sql::sqlparser::ast::{
        Expr as AstExpr, SelectItem, SetExpr, TableFactor, TableWithJoins,
    };
    fn relations(t: &TableWithJoins, out: &mut Vec<String>) {
        let mut one = |f: &TableFactor| match f {
            TableFactor::Table { name, alias, .. } => {
                if let Some(a) = alias {
                    out.push(a.name.value.to_ascii_lowercase());
                }
                if let Some(last) = name.0.last().and_then(|p| p.as_ident()) {
                    out.push(last.value.to_ascii_lowercase());
                }
            }
            TableFactor::Derived { alias: Some(a), .. }
            | TableFactor::Function { alias: Some(a), .. }
            | TableFactor::TableFunction { alias: Some(a), .. } => {
                out.push(a.name.value.to_ascii_lowercase())
            }
            _ => {}
        };
        one(&t.relation);
        for j in &t.joins {
            one(&j.relation);
        }
    }
    fn set_expr(e: &mut SetExpr) {
        match e {
            SetExpr::Select(select) => {
                let mut tables = Vec::new();
                for t in &mut select.from {
                    for f in std::iter::once(&mut t.relation)
                        .chain(t.joins.iter_mut().map(|j| &mut j.relation))
                    {
                        if let TableFactor::Derived { subquery, .. } = f {
                            name_fields_as_flink(subquery);
                        }
                    }
                    relations(t, &mut tables);
                }
                let field = |item: &SelectItem| -> Option<String> {
                    let SelectItem::UnnamedExpr(AstExpr::CompoundIdentifier(parts)) = item else {
                        return None;
                    };
                    let nested = parts.len() > 2
                        || (parts.len() == 2
                            && !tables.contains(&parts[0].value.to_ascii_lowercase()));
                    nested
                        .then(|| parts.last().map(|p| p.value.clone()))
                        .flatten()
                };
                let names: Vec<Option<String>> = select.projection.iter().map(field).collect();
                let taken = |n: &str, at: usize| {
                    select.projection.iter().enumerate().any(|(i, item)| {
                        i != at
                            && match item {
                                SelectItem::ExprWithAlias { alias, .. } => {
                                    alias.value.eq_ignore_ascii_case(n)
                                }
                                SelectItem::UnnamedExpr(AstExpr::Identifier(id)) => {
                                    id.value.eq_ignore_ascii_case(n)
                                }
                                SelectItem::UnnamedExpr(AstExpr::CompoundIdentifier(p)) => {
                                    p.last().is_some_and(|l| l.value.eq_ignore_ascii_case(n))
                                }
                                _ => false,
                            }
                    })
                };
                let renames: Vec<(usize, String)> = names
                    .iter()
                    .enumerate()
                    .filter_map(|(at, n)| n.clone().map(|n| (at, n)))
                    .filter(|(at, n)| !taken(n, *at))
                    .collect();
                for (at, name) in renames {
                    let item = std::mem::replace(
                        &mut select.projection[at],
                        SelectItem::Wildcard(Default::default()),
                    );
                    if let SelectItem::UnnamedExpr(expr) = item {
                        select.projection[at] = SelectItem::ExprWithAlias {
                            expr,
                            alias: datafusion_sql::sqlparser::ast::Ident::new(name.clone()),
                        };
                    }
                }
            }
            SetExpr::Query(q) => name_fields_as_flink(q),
            SetExpr::SetOperation { left, right, .. } => {
                set_expr(left);
                set_expr(right);
            }
            _ => {}
        }
    }
    if let Some(with) = &mut q.with {
        for cte in &mut with.cte_tables {
            name_fields_as_flink(&mut cte.query);
        }
    }
    set_expr(&mut q.body);
}

fn parser_options() -> ParserOptions {
    let mut o = ParserOptions::new();
    o.collect_spans = true;
    o.map_string_types_to_utf8view = false;
    // Identifiers keep their case, as in Flink: `dateTime` names the JSON field `dateTime`.
    o.enable_ident_normalization = false;
    // `0.908` is a DECIMAL(4, 3), as in Flink (`0.908 * price` is exact); `9.08E-1` a DOUBLE.
    o.parse_float_as_decimal = true;
    o
}

/// A table or view name as written (names are case-sensitive, as in Flink).
fn object_name(n: &ObjectName) -> String {
    n.0.last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.clone())
        .unwrap_or_else(|| n.to_string())
}

fn parse_one(text: &str, pos: Pos) -> Result<Statement> {
    let dialect = GenericDialect {};
    let mut statements = Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(text)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| SqlError::parser(e, pos))?;
    match statements.len() {
        1 => Ok(statements.remove(0)),
        _ => Err(SqlError::at(pos, "expected one statement")),
    }
}

/// Parses a snippet of the script as an expression, positions kept.
fn parse_expr(s: &Snippet) -> Result<SqlExpr> {
    let mut padded = "\n".repeat((s.pos.line as usize).saturating_sub(1));
    padded.push_str(&" ".repeat((s.pos.column as usize).saturating_sub(1)));
    padded.push_str(&s.text);
    let dialect = GenericDialect {};
    Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(&padded)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| SqlError::parser(e, s.pos))
}

/// The bound of `WATERMARK FOR c AS c - INTERVAL '…' …`.
fn watermark_delay(
    column: &str,
    s: &Snippet,
    planner: &SqlToRel<'_, Provider<'_>>,
) -> Result<Duration> {
    let e = parse_expr(s)?;
    let usage = || {
        SqlError::at(
            s.pos,
            format!(
                "WATERMARK FOR {column} AS {column} - INTERVAL '5' SECOND (bounded out-of-orderness) or AS {column}; found `{}`",
                s.text.trim()
            ),
        )
    };
    let is_col =
        |e: &SqlExpr| matches!(e, SqlExpr::Identifier(i) if i.value.eq_ignore_ascii_case(column));
    match &e {
        e if is_col(e) => Ok(Duration::ZERO),
        SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::Minus,
            right,
        } if is_col(left) => {
            let expr = planner
                .sql_to_expr(
                    *right.clone(),
                    &DFSchema::empty(),
                    &mut PlannerContext::new(),
                )
                .map_err(|_| usage())?;
            window_tvf::literal_interval_ms(&expr)
                .map(Duration::from_millis)
                .ok_or_else(usage)
        }
        _ => Err(usage()),
    }
}

/// Gives `MAP<K, V>` columns (read by sqlparser as BYTEA) their Arrow map type.
fn with_maps(
    schema: arrow::datatypes::Schema,
    maps: &[(String, String, String)],
    pos: Pos,
) -> Result<arrow::datatypes::Schema, SqlError> {
    use arrow::datatypes::{Field, Fields};
    if maps.is_empty() {
        return Ok(schema);
    }
    let simple = |t: &str| -> Result<DataType, SqlError> {
        Ok(match t.to_ascii_lowercase().as_str() {
            "string" | "varchar" | "text" => DataType::Utf8,
            "bytes" | "varbinary" | "bytea" => DataType::Binary,
            "bigint" => DataType::Int64,
            "int" | "integer" => DataType::Int32,
            "double" => DataType::Float64,
            "boolean" => DataType::Boolean,
            other => {
                return Err(SqlError::at(
                    pos,
                    format!(
                        "MAP<…> of `{other}` is not supported; use STRING, BYTES, BIGINT, INT, DOUBLE or BOOLEAN"
                    ),
                ));
            }
        })
    };
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    for (col, k, v) in maps {
        let Some(f) = fields.iter_mut().find(|f| f.name() == col) else {
            continue;
        };
        let entries = Field::new(
            "entries",
            DataType::Struct(Fields::from(vec![
                Field::new("key", simple(k)?, false),
                Field::new("value", simple(v)?, true),
            ])),
            false,
        );
        *f = Arc::new(Field::new(
            col,
            DataType::Map(Arc::new(entries), false),
            f.is_nullable(),
        ));
    }
    Ok(arrow::datatypes::Schema::new(fields))
}
