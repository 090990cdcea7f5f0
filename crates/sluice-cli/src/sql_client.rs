//! `sluice sql`: an interactive SQL client, as Flink's SQL client is, on an engine in
//! this process. Statements end with `;` and may span lines. DDL and `SET` change the
//! session; `SHOW TABLES`, `DESCRIBE t`, `EXPLAIN …` look at it; a `SELECT` runs and its
//! rows stream into a table (an updating result shows each change with its kind, as
//! Flink's tableau mode does) until its input ends, its `LIMIT` is reached or Ctrl-C;
//! an `INSERT INTO` starts a job in the background (`SHOW JOBS`, `STOP JOB 'n'`).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use sluice::plan::{ConnectorSpec, NodeKind};
use sluice::runtime::metrics::JobMetrics;
use sluice::runtime::{Collector, Operator, OperatorContext, StopHandle};
use sluice::sql::SqlContext;
use sluice_types::{Batch, Result, SluiceError, TaskInfo};
use tokio::sync::mpsc;

/// The sink a `SELECT` writes to: its rows come back to the client through a channel.
const CLIENT_SINK: &str = "sql-client";

/// Where the running query's rows go (set while one runs).
type Slot = Arc<Mutex<Option<mpsc::Sender<Batch>>>>;

struct ClientSink(Slot);

impl sluice::runtime::SinkConnector for ClientSink {
    type Config = (Slot, SchemaRef);

    fn name(&self) -> &'static str {
        CLIENT_SINK
    }

    fn options(&self) -> &'static [&'static str] {
        &[]
    }

    fn parse(&self, _spec: &ConnectorSpec, input: &SchemaRef) -> Result<Self::Config> {
        Ok((Arc::clone(&self.0), Arc::clone(input)))
    }

    fn accepts_updates(&self, _spec: &ConnectorSpec) -> bool {
        true
    }

    fn create(&self, config: &Arc<Self::Config>, _task: &TaskInfo) -> Result<Box<dyn Operator>> {
        let tx = config
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| SluiceError::internal("no query is waiting for rows"))?;
        Ok(Box::new(ClientSinkOperator {
            tx,
            schema: Arc::clone(&config.1),
        }))
    }
}

struct ClientSinkOperator {
    tx: mpsc::Sender<Batch>,
    schema: SchemaRef,
}

#[async_trait]
impl Operator for ClientSinkOperator {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn process_batch(
        &mut self,
        batch: Batch,
        _ctx: &mut OperatorContext,
        _out: &mut dyn Collector,
    ) -> Result<()> {
        // The client gone (the query stopped): the rows have nowhere to go.
        let _ = self.tx.send(batch).await;
        Ok(())
    }
}

/// A job an `INSERT INTO` started.
struct Job {
    name: String,
    metrics: Arc<JobMetrics>,
    stop: StopHandle,
    /// `None` while it runs; then how it ended.
    ended: Arc<Mutex<Option<String>>>,
}

/// One client session: the catalog, settings and jobs of this process.
pub struct Session {
    ctx: SqlContext,
    registry: sluice::runtime::ConnectorRegistry,
    slot: Slot,
    settings: Vec<(String, String)>,
    jobs: Vec<Job>,
    out: Box<dyn std::io::Write + Send>,
}

impl Session {
    /// A session writing what it shows to `out`.
    pub fn new(out: Box<dyn std::io::Write + Send>) -> Self {
        let slot: Slot = Arc::default();
        let mut registry = sluice::connectors::registry();
        registry.register_sink(ClientSink(Arc::clone(&slot)));
        let ctx =
            sluice::sql_context(registry.clone()).with_select_sink(ConnectorSpec::new(CLIENT_SINK));
        Self {
            ctx,
            registry,
            slot,
            settings: Vec::new(),
            jobs: Vec::new(),
            out,
        }
    }

    fn say(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    /// Runs one statement (without its `;`). `false`: the session ends.
    pub async fn execute(&mut self, statement: &str) -> bool {
        let words: Vec<String> = statement
            .split_whitespace()
            .map(str::to_ascii_uppercase)
            .collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let result = match words.as_slice() {
            [] => Ok(()),
            ["QUIT" | "EXIT"] => return false,
            ["HELP"] => {
                self.say(HELP);
                Ok(())
            }
            ["SHOW", "TABLES"] => {
                let rows = self
                    .ctx
                    .table_names()
                    .into_iter()
                    .filter(|(_, view)| !view)
                    .map(|(n, _)| vec![n])
                    .collect();
                self.table(&["table name"], rows);
                Ok(())
            }
            ["SHOW", "VIEWS"] => {
                let rows = self
                    .ctx
                    .table_names()
                    .into_iter()
                    .filter(|(_, view)| *view)
                    .map(|(n, _)| vec![n])
                    .collect();
                self.table(&["view name"], rows);
                Ok(())
            }
            ["SHOW", "JOBS"] => {
                self.show_jobs();
                Ok(())
            }
            ["DESCRIBE" | "DESC", _] => {
                let name = statement.split_whitespace().nth(1).unwrap_or_default();
                self.describe(name)
            }
            ["SET"] => {
                let rows = self
                    .settings
                    .iter()
                    .map(|(k, v)| vec![k.clone(), v.clone()])
                    .collect();
                self.table(&["key", "value"], rows);
                Ok(())
            }
            ["STOP", "JOB", ..] => self.stop_job(statement, &words).await,
            _ => self.plan_and_run(statement).await,
        };
        if let Err(e) = result {
            self.say(&format!(
                "[ERROR] Could not execute SQL statement. Reason:\n{e}"
            ));
        }
        true
    }

    fn describe(&mut self, name: &str) -> std::result::Result<(), String> {
        let d = self.ctx.describe(name).map_err(|e| e.message)?;
        let rows = d
            .columns
            .iter()
            .map(|(n, t, nullable)| {
                let key = d.primary_key.contains(n);
                let watermark = d
                    .watermark
                    .as_deref()
                    .filter(|w| w.starts_with(&format!("`{n}`")))
                    .unwrap_or_default();
                vec![
                    n.clone(),
                    t.clone(),
                    (*nullable && !key).to_string().to_uppercase(),
                    if key {
                        format!("PRI({n})")
                    } else {
                        String::new()
                    },
                    String::new(),
                    watermark.to_string(),
                ]
            })
            .collect();
        self.table(
            &["name", "type", "null", "key", "extras", "watermark"],
            rows,
        );
        Ok(())
    }

    fn show_jobs(&mut self) {
        let rows = self
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| {
                let status = j
                    .ended
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_else(|| "RUNNING".into());
                vec![
                    (i + 1).to_string(),
                    j.name.clone(),
                    status,
                    j.metrics.source_records().to_string(),
                    j.metrics.sink_records().to_string(),
                ]
            })
            .collect();
        self.table(
            &["job id", "job name", "status", "rows in", "rows out"],
            rows,
        );
    }

    async fn stop_job(
        &mut self,
        statement: &str,
        words: &[&str],
    ) -> std::result::Result<(), String> {
        let id: usize = statement
            .split('\'')
            .nth(1)
            .and_then(|n| n.trim().parse().ok())
            .ok_or("STOP JOB 'n' [WITH SAVEPOINT] [WITH DRAIN], n from SHOW JOBS")?;
        let job = self
            .jobs
            .get(id.wrapping_sub(1))
            .ok_or_else(|| format!("there is no job {id} (SHOW JOBS lists them)"))?;
        let savepoint = words.windows(2).any(|w| w == ["WITH", "SAVEPOINT"]);
        let drain = words.windows(2).any(|w| w == ["WITH", "DRAIN"]);
        let stop = job.stop.clone();
        let ended = Arc::clone(&job.ended);
        let said = if savepoint {
            let at = stop.savepoint(true).await.map_err(|e| e.to_string())?;
            format!("[INFO] Stopped job {id} with a savepoint at {at}")
        } else if drain {
            stop.stop().await;
            format!("[INFO] Stopped job {id}: its input ended and everything was flushed")
        } else {
            stop.cancel();
            format!("[INFO] Stopped job {id} where it was (WITH DRAIN flushes open windows)")
        };
        // As Flink's STOP JOB: done when the job is.
        let waiting = std::time::Instant::now();
        while ended.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            if waiting.elapsed() > Duration::from_secs(120) {
                return Err(format!("job {id} is still stopping after two minutes"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.say(&said);
        Ok(())
    }

    async fn plan_and_run(&mut self, statement: &str) -> std::result::Result<(), String> {
        let job = self
            .ctx
            .plan_script(statement)
            .map_err(|e| located(statement, &e))?;
        if let Some((k, v)) = setting(statement) {
            self.settings.retain(|(key, _)| key != &k);
            self.settings.push((k, v));
            self.say("[INFO] Session property has been set.");
            return Ok(());
        }
        for (stmt, plan) in job.explains {
            let text = sluice::Pipeline::from_plan(plan)
                .explain()
                .map_err(|e| e.to_string())?;
            self.say(&format!("== EXPLAIN {stmt} ==\n{text}"));
        }
        let Some(plan) = job.plan else {
            if !statement
                .trim_start()
                .to_ascii_uppercase()
                .starts_with("EXPLAIN")
            {
                self.say("[INFO] Execute statement succeeded.");
            }
            return Ok(());
        };
        let select = plan
            .nodes
            .iter()
            .any(|n| matches!(&n.kind, NodeKind::Sink(s) if s.connector == CLIENT_SINK));
        if select {
            self.select(plan).await
        } else {
            self.insert(plan).await
        }
    }

    async fn insert(&mut self, plan: sluice::plan::JobPlan) -> std::result::Result<(), String> {
        // Named after its sink unless `SET 'pipeline.name'` named it, as Flink names jobs.
        let mut name = plan.name.clone();
        if !self.settings.iter().any(|(k, _)| k == "pipeline.name")
            && let Some(sink) = plan.nodes.iter().find_map(|n| match &n.kind {
                NodeKind::Sink(_) => n.name.strip_prefix("sink ").map(str::to_string),
                _ => None,
            })
        {
            name = format!("insert-into_{sink}");
        }
        let mut plan = plan;
        plan.name = name.clone();
        let pipeline = sluice::Pipeline::from_plan(plan);
        pipeline.registry(self.registry.clone());
        let handle = pipeline.start().await.map_err(|e| e.to_string())?;
        let ended: Arc<Mutex<Option<String>>> = Arc::default();
        let job = Job {
            name,
            metrics: handle.metrics(),
            stop: handle.stop_handle(),
            ended: Arc::clone(&ended),
        };
        tokio::spawn(async move {
            let status = match handle.wait().await {
                Ok(()) => "FINISHED".to_string(),
                Err(e) => format!("FAILED: {e}"),
            };
            *ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
        });
        self.jobs.push(job);
        let id = self.jobs.len();
        self.say(&format!(
            "[INFO] SQL update statement has been successfully submitted as job {id} (SHOW JOBS; STOP JOB '{id}')."
        ));
        Ok(())
    }

    async fn select(&mut self, plan: sluice::plan::JobPlan) -> std::result::Result<(), String> {
        let limit = plan.row_limit();
        let (tx, mut rx) = mpsc::channel::<Batch>(16);
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        let pipeline = sluice::Pipeline::from_plan(plan);
        pipeline.registry(self.registry.clone());
        let started = pipeline.start().await;
        // Only this query's sinks hold the sender now: the channel ends with the job.
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        let handle = started.map_err(|e| e.to_string())?;
        let stop = handle.stop_handle();
        let waiter = tokio::spawn(handle.wait());
        let mut table: Option<Table> = None;
        let mut rows = 0usize;
        let mut interrupted = false;
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(batch) = batch else { break };
                    if table.is_none() {
                        let (t, head) = Table::for_batch(&batch);
                        let _ = self.out.write_all(head.as_bytes());
                        table = Some(t);
                    }
                    let t = table.as_ref().expect("invariant: set above");
                    let take = limit.map_or(batch.num_rows(), |l| (l - rows).min(batch.num_rows()));
                    let text = t.rows(&batch, take);
                    rows += take;
                    let _ = self.out.write_all(text.as_bytes());
                    let _ = self.out.flush();
                    if limit.is_some_and(|l| rows >= l) {
                        stop.cancel();
                        break;
                    }
                }
                _ = tokio::signal::ctrl_c() => {
                    stop.cancel();
                    interrupted = true;
                    break;
                }
            }
        }
        drop(rx);
        let result = waiter.await.map_err(|e| e.to_string())?;
        if let Some(t) = &table {
            let _ = self.out.write_all(t.rule().as_bytes());
        }
        match (result, interrupted) {
            (Err(e), false) if limit.is_none_or(|l| rows < l) => return Err(e.to_string()),
            (_, true) => self.say(&format!(
                "Query stopped (Ctrl-C). Received a total of {rows} rows"
            )),
            _ if rows == 0 => self.say("Empty set"),
            _ => self.say(&format!("Received a total of {rows} rows")),
        }
        Ok(())
    }

    /// Prints a small table with a header, as Flink's client does.
    fn table(&mut self, header: &[&str], rows: Vec<Vec<String>>) {
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let rule = format!(
            "+{}+\n",
            widths
                .iter()
                .map(|w| "-".repeat(w + 2))
                .collect::<Vec<_>>()
                .join("+")
        );
        let line = |cells: Vec<String>| {
            let cells: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!(" {c:>w$} "))
                .collect();
            format!("|{}|\n", cells.join("|"))
        };
        let mut text = rule.clone();
        text.push_str(&line(header.iter().map(|h| h.to_string()).collect()));
        text.push_str(&rule);
        let n = rows.len();
        for r in rows {
            text.push_str(&line(r));
        }
        if n > 0 {
            text.push_str(&rule);
        }
        text.push_str(&match n {
            0 => "Empty set".to_string(),
            1 => "1 row in set".to_string(),
            n => format!("{n} rows in set"),
        });
        self.say(&text);
    }
}

/// `SET 'key' = 'value'`: the key and value, unquoted.
fn setting(statement: &str) -> Option<(String, String)> {
    let rest = statement.trim_start();
    if !rest.get(..3)?.eq_ignore_ascii_case("set") {
        return None;
    }
    let parts: Vec<&str> = rest[3..].split('\'').collect();
    match parts.as_slice() {
        [_, k, eq, v, ..] if eq.trim() == "=" => Some((k.to_string(), v.to_string())),
        _ => None,
    }
}

/// A planning error with its position in the statement and a caret under it.
fn located(statement: &str, e: &sluice::sql::SqlError) -> String {
    let Some(pos) = e.pos.filter(|p| p.line > 0) else {
        return e.message.clone();
    };
    let mut out = format!("line {}, column {}: {}", pos.line, pos.column, e.message);
    if let Some(line) = statement.lines().nth(pos.line as usize - 1) {
        let under = " ".repeat(pos.column.saturating_sub(1) as usize);
        out.push_str(&format!("\n  {line}\n  {under}^"));
    }
    out
}

/// A streaming result's table: fixed column widths from the types (rows come one batch
/// at a time, so widths cannot wait for them all), the row kind first.
struct Table {
    widths: Vec<usize>,
}

impl Table {
    /// The table for rows like `batch`'s, and its header.
    fn for_batch(batch: &Batch) -> (Self, String) {
        let schema = batch.data.schema();
        let mut widths = vec![2];
        let mut header = vec!["op".to_string()];
        for f in schema.fields().iter().take(batch.num_user_columns()) {
            let by_type = match f.data_type() {
                DataType::Boolean => 5,
                DataType::Int8 | DataType::Int16 | DataType::Int32 => 11,
                t if t.is_integer() => 20,
                t if t.is_numeric() => 24,
                DataType::Timestamp(..) => 23,
                DataType::Date32 | DataType::Date64 => 10,
                _ => 30,
            };
            widths.push(by_type.max(f.name().chars().count()));
            header.push(f.name().clone());
        }
        let t = Self { widths };
        let head = format!("{}{}{}", t.rule(), t.line(&header), t.rule());
        (t, head)
    }

    fn rule(&self) -> String {
        format!(
            "+{}+\n",
            self.widths
                .iter()
                .map(|w| "-".repeat(w + 2))
                .collect::<Vec<_>>()
                .join("+")
        )
    }

    fn line(&self, cells: &[String]) -> String {
        let cells: Vec<String> = cells
            .iter()
            .zip(&self.widths)
            .map(|(c, &w)| {
                let c = match c.chars().count() > w {
                    true => format!(
                        "{}...",
                        c.chars().take(w.saturating_sub(3)).collect::<String>()
                    ),
                    false => c.clone(),
                };
                format!(" {c:>w$} ")
            })
            .collect();
        format!("|{}|\n", cells.join("|"))
    }

    /// The first `take` rows of `batch`, one line each.
    fn rows(&self, batch: &Batch, take: usize) -> String {
        let options = arrow::util::display::FormatOptions::default().with_null("<NULL>");
        let columns: Vec<_> = batch
            .data
            .columns()
            .iter()
            .take(batch.num_user_columns())
            .map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<_, _>>()
            .unwrap_or_default();
        let mut text = String::new();
        for i in 0..take {
            let mut cells = vec![batch.row_kind(i).short().to_string()];
            cells.extend(columns.iter().map(|f| f.value(i).to_string()));
            text.push_str(&self.line(&cells));
        }
        text
    }
}

const HELP: &str = "Statements end with `;` and may span lines.
  CREATE TABLE … WITH (…);  CREATE VIEW … AS …;  SET 'key' = 'value';  SET;
  SHOW TABLES;  SHOW VIEWS;  DESCRIBE t;  EXPLAIN SELECT …;
  SELECT …;            rows as they come, until the input ends, LIMIT n rows, or Ctrl-C
  INSERT INTO t …;     starts a job in the background
  SHOW JOBS;  STOP JOB 'n' [WITH SAVEPOINT] [WITH DRAIN];
  HELP;  QUIT;";

/// Whether `buffer` holds a whole statement: it ends with `;` outside quotes.
fn complete(buffer: &str) -> bool {
    let mut quoted = false;
    let mut last = ' ';
    for c in buffer.chars() {
        if c == '\'' {
            quoted = !quoted;
        }
        if !c.is_whitespace() {
            last = c;
        }
    }
    !quoted && last == ';'
}

/// Runs the client: the statements of `init` first, then of `file` (and exits), or the
/// prompt.
pub async fn run(init: Option<PathBuf>, file: Option<PathBuf>) -> anyhow::Result<()> {
    let mut session = Session::new(Box::new(std::io::stdout()));
    for path in init.iter().chain(file.iter()) {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        for statement in statements(&text) {
            if !session.execute(&statement).await {
                return Ok(());
            }
        }
    }
    if file.is_some() {
        return Ok(());
    }
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".sluice_sql_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("Sluice SQL client. Statements end with `;`; HELP; lists what it runs, QUIT; leaves.");
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "Sluice SQL> "
        } else {
            "          > "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                buffer.push_str(&line);
                buffer.push('\n');
                if !complete(&buffer) {
                    continue;
                }
                let text = std::mem::take(&mut buffer);
                let _ = editor.add_history_entry(text.trim());
                let mut go_on = true;
                for statement in statements(&text) {
                    go_on = session.execute(&statement).await;
                    if !go_on {
                        break;
                    }
                }
                if !go_on {
                    break;
                }
            }
            // Ctrl-C at the prompt drops what was typed.
            Err(rustyline::error::ReadlineError::Interrupted) => buffer.clear(),
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    println!("Goodbye.");
    // Jobs started here end with the process.
    tokio::time::sleep(Duration::from_millis(0)).await;
    Ok(())
}

/// The statements of `text`, split at `;` outside quotes, without it.
fn statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                current.push(c);
            }
            ';' if !quoted => {
                if !current.trim().is_empty() {
                    out.push(current.trim().to_string());
                }
                current.clear();
            }
            _ => current.push(c),
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_end_at_semicolons_outside_quotes() {
        assert!(complete("SELECT 1;\n"));
        assert!(!complete("SELECT ';'\n"));
        assert!(!complete("SELECT 1\n"));
        assert_eq!(
            statements("SET 'a' = 'x;y'; SHOW TABLES;\nSELECT 1"),
            ["SET 'a' = 'x;y'", "SHOW TABLES", "SELECT 1"]
        );
        assert_eq!(
            setting("SET 'table.exec.state.ttl' = '1 h'"),
            Some(("table.exec.state.ttl".into(), "1 h".into()))
        );
    }
}
