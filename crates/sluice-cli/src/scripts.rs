//! SQL scripts for `sluice run` and `sluice explain`: planned as one session, their
//! errors printed as compilers print theirs; and the built-in examples by name.

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::examples;

/// The example `sluice run` runs without a script.
pub(crate) const DEFAULT_EXAMPLE: &str = "bids-per-auction";

/// Plans SQL script files in order, as one session (the tables of one are there for the
/// next); `-p` becomes the default parallelism. The job is named after the last file.
/// One file at most may hold INSERT INTO or SELECT statements.
pub(crate) fn plan_scripts(
    paths: &[PathBuf],
    parallelism: Option<usize>,
) -> anyhow::Result<sluice::sql::SqlJob> {
    let mut ctx = sluice::sql_context(sluice::connectors::registry());
    if let Some(p) = parallelism {
        ctx.set("parallelism.default", &p.to_string())?;
    }
    let mut job = sluice::sql::SqlJob::default();
    let mut planned_in: Option<&PathBuf> = None;
    for path in paths {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sql".into());
        ctx.set("pipeline.name", &stem)?;
        let next = ctx.plan_script(&text).map_err(|e| {
            let mut said = sql_error(path, &text, &e);
            // A query file next to the file that declares its tables.
            let tables = path.with_file_name("tables.sql");
            if e.message.contains("does not exist") && tables.is_file() && !paths.contains(&tables)
            {
                said.push_str(&format!(
                    "\nhint: {} declares tables; run it first: sluice run {} {}",
                    tables.display(),
                    tables.display(),
                    path.display()
                ));
            }
            anyhow::anyhow!(said)
        })?;
        job.explains.extend(next.explains);
        if let Some(plan) = next.plan {
            if let Some(first) = planned_in {
                bail!(
                    "{} and {} both hold INSERT INTO or SELECT statements; put them in one file (or in a statement set) to run them as one job",
                    first.display(),
                    path.display()
                );
            }
            planned_in = Some(path);
            job.plan = Some(plan);
        }
    }
    Ok(job)
}

/// A SQL error as compilers write theirs: `file:line:column: message`, then the line
/// with a caret under the column.
fn sql_error(path: &std::path::Path, text: &str, e: &sluice::sql::SqlError) -> String {
    let Some(pos) = e.pos.filter(|p| p.line > 0) else {
        return format!("{}: {}", path.display(), e.message);
    };
    let mut out = format!(
        "{}:{}:{}: {}",
        path.display(),
        pos.line,
        pos.column,
        e.message
    );
    if let Some((line, under)) = e.marked_line(text) {
        let number = pos.line.to_string();
        let pad = " ".repeat(number.len());
        out.push_str(&format!("\n {number} | {line}\n {pad} | {under}^"));
    }
    out
}

pub(crate) fn find_example(name: &str) -> anyhow::Result<&'static examples::Example> {
    match examples::find(name) {
        Some(e) => Ok(e),
        None => bail!(
            "unknown example `{name}`; available: {}",
            examples::EXAMPLES
                .iter()
                .map(|e| e.name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
