//! The commands that talk to a `sluice server`: submit, list, status, savepoint, ps,
//! logs, cancel; and how they print what the server answers.

use anyhow::Context;

use crate::Command;

/// Which server a client command talks to.
#[derive(clap::Args)]
pub(crate) struct ServerArgs {
    /// The server's address.
    #[arg(long, env = "SLUICE_SERVER", default_value = "http://127.0.0.1:8081")]
    pub(crate) server: String,
    /// API token (also `SLUICE_TOKEN`).
    #[arg(long, env = "SLUICE_TOKEN")]
    pub(crate) token: Option<String>,
}

impl ServerArgs {
    /// One call; the answer's JSON, or the server's error as an error.
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = sluice::connectors::http::HttpUrl::parse(&self.server)?;
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let body = body.map(|b| b.to_string());
        let (status, text) = url.request(method, path, body.as_deref(), &headers)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("the server answered HTTP {status}: {text}"))?;
        if !(200..300).contains(&status) {
            anyhow::bail!(
                "{} ({})",
                v["error"]["message"].as_str().unwrap_or(&text),
                v["error"]["code"].as_str().unwrap_or("error")
            );
        }
        Ok(v)
    }
}

/// Runs a client command.
pub(crate) fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Submit {
            script,
            name,
            parallelism,
            from_savepoint,
            server,
        } => {
            let sql = std::fs::read_to_string(&script)
                .with_context(|| format!("reading {}", script.display()))?;
            let name =
                name.or_else(|| script.file_stem().map(|s| s.to_string_lossy().into_owned()));
            let v = server.call(
                "POST",
                "/api/jobs",
                Some(&serde_json::json!({
                    "sql": sql,
                    "name": name,
                    "parallelism": parallelism,
                    "from_savepoint": from_savepoint,
                })),
            )?;
            println!("{}", v["id"]);
            Ok(())
        }
        Command::List { json, server } => {
            let v = server.call("GET", "/api/jobs", None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|j| {
                    vec![
                        j["id"].to_string(),
                        text(&j["name"]),
                        text(&j["status"]),
                        j["source_records"].to_string(),
                        j["sink_records"].to_string(),
                        j["restarts"].to_string(),
                        j["submitted_ms"].as_i64().map(utc).unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                columns(
                    &[
                        "ID",
                        "NAME",
                        "STATUS",
                        "ROWS IN",
                        "ROWS OUT",
                        "RESTARTS",
                        "SUBMITTED (UTC)"
                    ],
                    &rows
                )
            );
            Ok(())
        }
        Command::Status { id, json, server } => {
            let v = server.call("GET", &format!("/api/jobs/{id}"), None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", job_status(&v));
            }
            Ok(())
        }
        Command::Diagnose { id, json, server } => {
            let v = server.call("GET", &format!("/api/jobs/{id}/diagnosis"), None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", diagnosis_text(&v));
            }
            Ok(())
        }
        Command::Savepoint { id, stop, server } => {
            let v = server.call(
                "POST",
                &format!("/api/jobs/{id}/savepoint"),
                Some(&serde_json::json!({ "stop": stop })),
            )?;
            println!("{}", v["location"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Ps { server, .. } => {
            let v = server.call("GET", "/api/lineage", None)?;
            let ends = |e: &serde_json::Value| {
                e.as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| {
                        format!(
                            "{}:{}",
                            x["connector"].as_str().unwrap_or(""),
                            x["name"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            for j in v.as_array().into_iter().flatten() {
                println!(
                    "{:>5}  {:<10} {}  {} -> {} -> {}",
                    j["id"],
                    j["status"].as_str().unwrap_or(""),
                    j["name"].as_str().unwrap_or(""),
                    ends(&j["reads"]),
                    j["name"].as_str().unwrap_or(""),
                    ends(&j["writes"])
                );
            }
            Ok(())
        }
        Command::Logs {
            id,
            errors,
            level,
            task,
            grep,
            limit,
            server,
        } => {
            let mut query = format!("limit={limit}");
            let level = if errors { Some("error".into()) } else { level };
            for (k, v) in [("level", level), ("task", task), ("q", grep)] {
                if let Some(v) = v {
                    query.push_str(&format!("&{k}={}", percent_encode(&v)));
                }
            }
            let v = server.call("GET", &format!("/api/jobs/{id}/logs?{query}"), None)?;
            for e in v.as_array().into_iter().flatten() {
                let ms = e["time_ms"].as_i64().unwrap_or(0);
                let t = sluice_types::time_of_day(ms);
                println!(
                    "{t} {:<5} {:<16} {}",
                    e["level"].as_str().unwrap_or(""),
                    e["task"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                );
                if let Some(trace) = e["trace"].as_str() {
                    println!("{trace}");
                }
            }
            Ok(())
        }
        Command::Cancel { id, server } => {
            server.call("POST", &format!("/api/jobs/{id}/cancel"), None)?;
            println!("cancelling job {id}");
            Ok(())
        }
        _ => anyhow::bail!("not a command for a server"),
    }
}

/// `value` safe in a URL's query.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(
            |b| match b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                true => (b as char).to_string(),
                false => format!("%{b:02X}"),
            },
        )
        .collect()
}

/// A JSON string's text (empty for anything else).
fn text(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Epoch milliseconds as `2026-12-06 10:00:05` (UTC).
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = sluice_types::civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Rows under a header, each column as wide as its widest cell (numbers to the right).
fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let numeric: Vec<bool> = (0..header.len())
        .map(|i| {
            !rows.is_empty()
                && rows.iter().all(|r| {
                    r[i].chars()
                        .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
                })
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let cells: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| match numeric[i] {
                true => format!("{c:>w$}", w = widths[i]),
                false => format!("{c:<w$}", w = widths[i]),
            })
            .collect();
        format!("{}\n", cells.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// A job's detail as a person reads it.
fn job_status(v: &serde_json::Value) -> String {
    let ms = |x: &serde_json::Value| x.as_f64().map_or("-".to_string(), |m| format!("{m:.1} ms"));
    let mut out = format!(
        "job {}  {}  {}  (restarts {})\n",
        v["id"],
        text(&v["name"]),
        text(&v["status"]),
        v["restarts"]
    );
    if let Some(t) = v["submitted_ms"].as_i64() {
        out.push_str(&format!("submitted {} UTC\n", utc(t)));
    }
    out.push_str(&format!(
        "rows in {}  rows out {}  checkpoints {} completed, {} failed\n",
        v["source_records"],
        v["sink_records"],
        v["checkpoints"]["completed"],
        v["checkpoints"]["failed"]
    ));
    if let Some(e) = v["error"].as_str() {
        out.push_str(&format!("error: {e}\n"));
    }
    let rows: Vec<Vec<String>> = v["operators"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            vec![
                o["id"].to_string(),
                text(&o["name"]),
                o["parallelism"].to_string(),
                o["records_in"].to_string(),
                o["records_out"].to_string(),
                o["busy_ms"].to_string(),
                o["backpressured_ms"].to_string(),
                o["watermark_ms"]
                    .as_i64()
                    .map(utc)
                    .unwrap_or_else(|| "-".into()),
                ms(&o["latency_p99_ms"]),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&columns(
        &[
            "ID",
            "OPERATOR",
            "P",
            "IN",
            "OUT",
            "BUSY MS",
            "BACKPRESSURE MS",
            "WATERMARK (UTC)",
            "P99 LATENCY",
        ],
        &rows,
    ));
    for a in v["alerts"].as_array().into_iter().flatten() {
        out.push_str(&format!("alert: {}\n", a));
    }
    out
}

/// A diagnosis as `sluice diagnose` prints it: the causes, most likely first.
fn diagnosis_text(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let causes = v["causes"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "job {}: {} (the last {} s)",
        v["job"],
        v["summary"].as_str().unwrap_or(""),
        v["seconds"]
    );
    for (i, c) in causes.iter().enumerate() {
        let _ = writeln!(
            out,
            "\n{}. [{} {:.2}] {}",
            i + 1,
            c["kind"].as_str().unwrap_or(""),
            c["score"].as_f64().unwrap_or(0.0),
            c["title"].as_str().unwrap_or("")
        );
        for e in c["evidence"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "   - {}", e.as_str().unwrap_or(""));
        }
        let _ = writeln!(out, "   do: {}", c["action"].as_str().unwrap_or(""));
    }
    out
}
