//! `sluice sql`: an interactive SQL client, as Flink's SQL client is, on an engine in
//! this process. Statements end with `;` and may span lines. DDL and `SET` change the
//! session; `SHOW TABLES`, `DESCRIBE t`, `EXPLAIN …` look at it; a `SELECT` runs and its
//! rows stream into a table (an updating result shows each change with its kind, as
//! Flink's tableau mode does) until its input ends, its `LIMIT` is reached or Ctrl-C;
//! an `INSERT INTO` starts a job in the background (`SHOW JOBS`, `STOP JOB 'n'`).
//!
//! With `--server URL` the same session runs against a `sluice server`: the client keeps
//! the session's declarations and sends them with each statement; the server plans it,
//! streams a `SELECT`'s rows back and runs an `INSERT INTO` as one of its jobs.

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice::connectors::ChannelSink;
use sluice::connectors::http::HttpUrl;
use sluice::plan::{ConnectorSpec, NodeKind};
use sluice::runtime::StopHandle;
use sluice::runtime::metrics::JobMetrics;
use sluice::sql::SqlContext;
use tokio::sync::mpsc;

/// The sink a `SELECT` writes to: its rows come back to the client through a channel.
const CLIENT_SINK: &str = "sql-client";

/// A job an `INSERT INTO` started in this process.
struct Job {
    name: String,
    metrics: Arc<JobMetrics>,
    stop: StopHandle,
    /// `None` while it runs; then how it ended.
    ended: Arc<Mutex<Option<String>>>,
}

/// A `sluice server` and how to call it.
pub struct Remote {
    url: HttpUrl,
    token: Option<String>,
}

impl Remote {
    /// The server at `url`, called with `token` when given.
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Self> {
        Ok(Self {
            url: HttpUrl::parse(url)?,
            token,
        })
    }

    fn headers(&self) -> Vec<(&str, String)> {
        let mut h = vec![("Content-Type", "application/json".to_string())];
        if let Some(t) = &self.token {
            h.push(("Authorization", format!("Bearer {t}")));
        }
        h
    }

    /// One call; its JSON answer, or the server's message.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let headers = self.headers();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let body = body.map(|b| b.to_string());
        let (status, text) = self
            .url
            .request(method, path, body.as_deref(), &headers)
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|_| format!("the server answered HTTP {status}: {text}"))?;
        match (200..300).contains(&status) {
            true => Ok(v),
            false => Err(v["error"]["message"]
                .as_str()
                .map_or_else(|| text.clone(), str::to_string)),
        }
    }
}

/// Where statements run.
enum Backend {
    /// In this process.
    Local {
        ctx: Box<SqlContext>,
        registry: sluice::runtime::ConnectorRegistry,
        sink: ChannelSink,
        jobs: Vec<Job>,
    },
    /// On a server, the session's declarations kept here.
    Remote { server: Remote, session: String },
}

/// One client session: its catalog, settings and jobs.
pub struct Session {
    backend: Backend,
    settings: Vec<(String, String)>,
    out: Box<dyn std::io::Write + Send>,
}

/// A table or view as `DESCRIBE` shows it: columns (name, type, nullable), primary key,
/// watermark.
type Described = (Vec<(String, String, bool)>, Vec<String>, Option<String>);

impl Session {
    /// A session on an engine in this process, writing what it shows to `out`.
    pub fn new(out: Box<dyn std::io::Write + Send>) -> Self {
        let sink = ChannelSink::new(CLIENT_SINK);
        let mut registry = sluice::connectors::registry();
        registry.register_sink(sink.clone());
        let ctx =
            sluice::sql_context(registry.clone()).with_select_sink(ConnectorSpec::new(CLIENT_SINK));
        Self {
            backend: Backend::Local {
                ctx: Box::new(ctx),
                registry,
                sink,
                jobs: Vec::new(),
            },
            settings: Vec::new(),
            out,
        }
    }

    /// A session on a server.
    pub fn remote(server: Remote, out: Box<dyn std::io::Write + Send>) -> Self {
        Self {
            backend: Backend::Remote {
                server,
                session: String::new(),
            },
            settings: Vec::new(),
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
            ["SHOW", which @ ("TABLES" | "VIEWS")] => {
                let views = *which == "VIEWS";
                self.tables().map(|tables| {
                    let rows = tables
                        .into_iter()
                        .filter(|(_, view)| *view == views)
                        .map(|(n, _)| vec![n])
                        .collect();
                    self.table(&[if views { "view name" } else { "table name" }], rows);
                })
            }
            ["SHOW", "JOBS"] => self.show_jobs(),
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
            _ => match &self.backend {
                Backend::Local { .. } => self.plan_and_run(statement).await,
                Backend::Remote { .. } => self.remote_statement(statement).await,
            },
        };
        if let Err(e) = result {
            self.say(&format!(
                "[ERROR] Could not execute SQL statement. Reason:\n{e}"
            ));
        }
        true
    }

    /// The session's tables and views: (name, whether a view).
    fn tables(&self) -> Result<Vec<(String, bool)>, String> {
        match &self.backend {
            Backend::Local { ctx, .. } => Ok(ctx.table_names()),
            Backend::Remote { .. } => Ok(self
                .remote_plan("")?
                .0
                .iter()
                .map(|t| (text(&t["name"]), t["view"] == true))
                .collect()),
        }
    }

    /// Plans `statement` after the session on the server: the tables after it, what it
    /// is, and its plans (for EXPLAIN).
    fn remote_plan(
        &self,
        statement: &str,
    ) -> Result<(Vec<serde_json::Value>, String, Vec<String>), String> {
        let Backend::Remote { server, session } = &self.backend else {
            return Err("not on a server".into());
        };
        let v = server.call(
            "POST",
            "/api/sql/plan",
            Some(serde_json::json!({ "session": session, "statement": statement })),
        )?;
        Ok((
            v["tables"].as_array().cloned().unwrap_or_default(),
            text(&v["kind"]),
            v["explains"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect(),
        ))
    }

    fn described(&self, name: &str) -> Result<Described, String> {
        match &self.backend {
            Backend::Local { ctx, .. } => {
                let d = ctx.describe(name).map_err(|e| e.message)?;
                Ok((d.columns, d.primary_key, d.watermark))
            }
            Backend::Remote { .. } => {
                let (tables, _, _) = self.remote_plan("")?;
                let key = name.trim_matches('`');
                let t = tables
                    .iter()
                    .find(|t| text(&t["name"]).eq_ignore_ascii_case(key))
                    .ok_or_else(|| format!("table or view `{key}` does not exist"))?;
                let columns = t["columns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| (text(&c["name"]), text(&c["type"]), c["nullable"] == true))
                    .collect();
                let key = t["primary_key"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect();
                Ok((columns, key, t["watermark"].as_str().map(str::to_string)))
            }
        }
    }

    fn describe(&mut self, name: &str) -> Result<(), String> {
        let (columns, primary_key, watermark) = self.described(name)?;
        let rows = columns
            .iter()
            .map(|(n, t, nullable)| {
                let key = primary_key.contains(n);
                let watermark = watermark
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

    fn show_jobs(&mut self) -> Result<(), String> {
        let rows = match &self.backend {
            Backend::Local { jobs, .. } => jobs
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
                .collect(),
            Backend::Remote { server, .. } => server
                .call("GET", "/api/jobs", None)?
                .as_array()
                .into_iter()
                .flatten()
                .map(|j| {
                    vec![
                        j["id"].to_string(),
                        text(&j["name"]),
                        text(&j["status"]).to_uppercase(),
                        j["source_records"].to_string(),
                        j["sink_records"].to_string(),
                    ]
                })
                .collect(),
        };
        self.table(
            &["job id", "job name", "status", "rows in", "rows out"],
            rows,
        );
        Ok(())
    }

    async fn stop_job(&mut self, statement: &str, words: &[&str]) -> Result<(), String> {
        let id: usize = statement
            .split('\'')
            .nth(1)
            .and_then(|n| n.trim().parse().ok())
            .ok_or("STOP JOB 'n' [WITH SAVEPOINT] [WITH DRAIN], n from SHOW JOBS")?;
        let savepoint = words.windows(2).any(|w| w == ["WITH", "SAVEPOINT"]);
        let drain = words.windows(2).any(|w| w == ["WITH", "DRAIN"]);
        let said = match &self.backend {
            Backend::Remote { server, .. } => {
                if drain {
                    return Err(
                        "a server stops a job WITH SAVEPOINT, or cancels it; it does not drain one"
                            .into(),
                    );
                }
                match savepoint {
                    true => {
                        let v = server.call(
                            "POST",
                            &format!("/api/jobs/{id}/savepoint"),
                            Some(serde_json::json!({ "stop": true })),
                        )?;
                        format!(
                            "[INFO] Stopped job {id} with a savepoint at {}",
                            text(&v["location"])
                        )
                    }
                    false => {
                        server.call("POST", &format!("/api/jobs/{id}/cancel"), None)?;
                        format!("[INFO] Cancelled job {id}")
                    }
                }
            }
            Backend::Local { jobs, .. } => {
                let job = jobs
                    .get(id.wrapping_sub(1))
                    .ok_or_else(|| format!("there is no job {id} (SHOW JOBS lists them)"))?;
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
                    format!(
                        "[INFO] Stopped job {id} where it was (WITH DRAIN flushes open windows)"
                    )
                };
                // As Flink's STOP JOB: done when the job is.
                let waiting = std::time::Instant::now();
                while ended.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
                    if waiting.elapsed() > Duration::from_secs(120) {
                        return Err(format!("job {id} is still stopping after two minutes"));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                said
            }
        };
        self.say(&said);
        Ok(())
    }

    /// A statement other than the client's own, on the server.
    async fn remote_statement(&mut self, statement: &str) -> Result<(), String> {
        let (_, kind, explains) = self.remote_plan(statement)?;
        match kind.as_str() {
            "ddl" => {
                if let Backend::Remote { session, .. } = &mut self.backend {
                    session.push_str(statement);
                    session.push_str(";\n");
                }
                self.remember_setting(statement);
                Ok(())
            }
            "explain" => {
                for e in explains {
                    self.say(&e);
                }
                Ok(())
            }
            "insert" => {
                let Backend::Remote { server, session } = &self.backend else {
                    return Ok(());
                };
                let v = server.call(
                    "POST",
                    "/api/jobs",
                    Some(serde_json::json!({ "sql": format!("{session}{statement};") })),
                )?;
                self.say(&format!(
                    "[INFO] SQL update statement has been successfully submitted as job {} on the server (SHOW JOBS; STOP JOB '{}').",
                    v["id"], v["id"]
                ));
                Ok(())
            }
            _ => self.remote_select(statement).await,
        }
    }

    /// A `SELECT` on the server: its rows as the server streams them.
    async fn remote_select(&mut self, statement: &str) -> Result<(), String> {
        let Backend::Remote { server, session } = &self.backend else {
            return Ok(());
        };
        let headers = server.headers();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let body = serde_json::json!({ "session": session, "statement": statement }).to_string();
        let (status, reader) = server
            .url
            .stream("POST", "/api/sql/select", Some(&body), &headers)
            .map_err(|e| e.to_string())?;
        let (tx, mut rx) = mpsc::channel::<String>(64);
        // The answer is read on a thread of its own; a line at a time comes here.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        if !(200..300).contains(&status) {
            let mut text = String::new();
            while let Some(l) = rx.recv().await {
                text.push_str(&l);
            }
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            return Err(v["error"]["message"]
                .as_str()
                .map_or(text.clone(), str::to_string));
        }
        let mut interrupts = interrupts()?;
        let mut table: Option<Table> = None;
        let mut rows = 0usize;
        let mut ended: Option<Result<(), String>> = None;
        let mut interrupted = false;
        loop {
            tokio::select! {
                line = rx.recv() => {
                    let Some(line) = line else { break };
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    if let Some(columns) = v["columns"].as_array() {
                        let columns: Vec<(String, String)> = columns
                            .iter()
                            .map(|c| (text(&c["name"]), text(&c["type"])))
                            .collect();
                        let (t, head) = Table::new(&columns);
                        let _ = self.out.write_all(head.as_bytes());
                        table = Some(t);
                    } else if let (Some(op), Some(values), Some(t)) = (v["op"].as_str(), v["row"].as_array(), &table) {
                        let mut cells = vec![op.to_string()];
                        cells.extend(values.iter().map(text));
                        let _ = self.out.write_all(t.line(&cells).as_bytes());
                        let _ = self.out.flush();
                        rows += 1;
                    } else if let Some(e) = v["error"].as_str() {
                        ended = Some(Err(e.to_string()));
                    } else if v["end"].is_string() {
                        ended = Some(Ok(()));
                    }
                }
                _ = interrupts.recv() => {
                    interrupted = true;
                    break;
                }
            }
        }
        // Dropping the channel ends the reading thread at its next line, which closes the
        // connection: the server cancels the query.
        drop(rx);
        self.finish(table.as_ref(), rows, interrupted, ended.unwrap_or(Ok(())))
    }

    fn remember_setting(&mut self, statement: &str) {
        match setting(statement) {
            Some((k, v)) => {
                self.settings.retain(|(key, _)| key != &k);
                self.settings.push((k, v));
                self.say("[INFO] Session property has been set.");
            }
            None => self.say("[INFO] Execute statement succeeded."),
        }
    }

    async fn plan_and_run(&mut self, statement: &str) -> Result<(), String> {
        let Backend::Local { ctx, .. } = &mut self.backend else {
            return Ok(());
        };
        let job = ctx
            .plan_script(statement)
            .map_err(|e| e.in_text(statement))?;
        for (stmt, plan) in job.explains.clone() {
            let text = sluice::Pipeline::from_plan(plan)
                .explain()
                .map_err(|e| e.to_string())?;
            self.say(&format!("== EXPLAIN {stmt} =="));
            self.say(&text);
        }
        let Some(plan) = job.plan else {
            if job.explains.is_empty() {
                self.remember_setting(statement);
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

    async fn insert(&mut self, plan: sluice::plan::JobPlan) -> Result<(), String> {
        let Backend::Local { registry, jobs, .. } = &mut self.backend else {
            return Ok(());
        };
        // Named after its sink unless `SET 'pipeline.name'` named it, as Flink names jobs.
        let mut plan = plan;
        if !self.settings.iter().any(|(k, _)| k == "pipeline.name")
            && let Some(sink) = plan.nodes.iter().find_map(|n| match &n.kind {
                NodeKind::Sink(_) => n.name.strip_prefix("sink ").map(str::to_string),
                _ => None,
            })
        {
            plan.name = format!("insert-into_{sink}");
        }
        let name = plan.name.clone();
        let pipeline = sluice::Pipeline::from_plan(plan);
        pipeline.registry(registry.clone());
        let handle = pipeline.start().await.map_err(|e| e.to_string())?;
        let ended: Arc<Mutex<Option<String>>> = Arc::default();
        jobs.push(Job {
            name,
            metrics: handle.metrics(),
            stop: handle.stop_handle(),
            ended: Arc::clone(&ended),
        });
        let id = jobs.len();
        tokio::spawn(async move {
            let status = match handle.wait().await {
                Ok(()) => "FINISHED".to_string(),
                Err(e) => format!("FAILED: {e}"),
            };
            *ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
        });
        self.say(&format!(
            "[INFO] SQL update statement has been successfully submitted as job {id} (SHOW JOBS; STOP JOB '{id}')."
        ));
        Ok(())
    }

    async fn select(&mut self, plan: sluice::plan::JobPlan) -> Result<(), String> {
        let Backend::Local { registry, sink, .. } = &self.backend else {
            return Ok(());
        };
        let limit = plan.row_limit();
        let mut interrupts = interrupts()?;
        let mut rx = sink.open(16);
        let pipeline = sluice::Pipeline::from_plan(plan);
        pipeline.registry(registry.clone());
        let started = pipeline.start().await;
        // Only this query's sinks hold the sender now: the channel ends with the job.
        sink.close();
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
                        let schema = batch.data.schema();
                        let columns: Vec<(String, String)> = schema
                            .fields()
                            .iter()
                            .take(batch.num_user_columns())
                            .map(|f| (f.name().clone(), sluice::sql::types::sql_type(f.data_type())))
                            .collect();
                        let (t, head) = Table::new(&columns);
                        let _ = self.out.write_all(head.as_bytes());
                        table = Some(t);
                    }
                    let t = table.as_ref().expect("invariant: set above");
                    let take = limit.map_or(batch.num_rows(), |l| (l - rows).min(batch.num_rows()));
                    let mut text = String::new();
                    for (op, values) in sluice::connectors::sinks::rows_as_text(&batch, take) {
                        let mut cells = vec![op];
                        cells.extend(values);
                        text.push_str(&t.line(&cells));
                    }
                    rows += take;
                    let _ = self.out.write_all(text.as_bytes());
                    let _ = self.out.flush();
                    if limit.is_some_and(|l| rows >= l) {
                        stop.cancel();
                        break;
                    }
                }
                _ = interrupts.recv() => {
                    stop.cancel();
                    interrupted = true;
                    break;
                }
            }
        }
        drop(rx);
        let result = waiter.await.map_err(|e| e.to_string())?;
        // Stopped at its limit: the cancel is no failure.
        let result = match limit.is_some_and(|l| rows >= l) || interrupted {
            true => Ok(()),
            false => result.map_err(|e| e.to_string()),
        };
        self.finish(table.as_ref(), rows, interrupted, result)
    }

    /// Closes a query's table and says how it ended.
    fn finish(
        &mut self,
        table: Option<&Table>,
        rows: usize,
        interrupted: bool,
        result: Result<(), String>,
    ) -> Result<(), String> {
        if let Some(t) = table {
            let _ = self.out.write_all(t.rule().as_bytes());
        }
        result?;
        match (interrupted, rows) {
            (true, _) => self.say(&format!(
                "Query stopped (Ctrl-C). Received a total of {rows} rows"
            )),
            (false, 0) => self.say("Empty set"),
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

/// Ctrl-C while a query runs: a stream made before the query starts, so that one pressed
/// between two rows is not missed (a fresh `ctrl_c()` future per loop turn would miss it).
fn interrupts() -> Result<tokio::signal::unix::Signal, String> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("cannot watch for Ctrl-C: {e}"))
}

/// A JSON string's text (a number or other value as JSON writes it).
fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
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

/// A streaming result's table: fixed column widths from the SQL types (rows come one
/// batch at a time, so widths cannot wait for them all), the row kind first.
struct Table {
    widths: Vec<usize>,
}

impl Table {
    /// The table for columns (name, SQL type), and its header.
    fn new(columns: &[(String, String)]) -> (Self, String) {
        let mut widths = vec![2];
        let mut header = vec!["op".to_string()];
        for (name, sql_type) in columns {
            let base = sql_type.split(['(', '<', ' ']).next().unwrap_or_default();
            let by_type = match base {
                "BOOLEAN" => 5,
                "TINYINT" | "SMALLINT" | "INT" => 11,
                "BIGINT" => 20,
                "FLOAT" | "DOUBLE" | "DECIMAL" => 24,
                "TIMESTAMP" | "TIMESTAMP_LTZ" => 23,
                "DATE" => 10,
                _ => 30,
            };
            widths.push(by_type.max(name.chars().count()));
            header.push(name.clone());
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
pub async fn run(
    init: Option<PathBuf>,
    file: Option<PathBuf>,
    server: Option<Remote>,
) -> anyhow::Result<()> {
    let mut session = match server {
        Some(r) => Session::remote(r, Box::new(std::io::stdout())),
        None => Session::new(Box::new(std::io::stdout())),
    };
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
    println!(
        "Sluice SQL client{}. Statements end with `;`; HELP; lists what it runs, QUIT; leaves.",
        match &session.backend {
            Backend::Remote { .. } => " on a server",
            Backend::Local { .. } => "",
        }
    );
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
